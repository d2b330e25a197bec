//! [`FencedStore`] checks written once for every store (InMemory, S3 through moto, Azure through
//! Azurite): a paused holder is refused after its successor wrote, sixteen holders leave only
//! increasing tokens in the data, a concurrent raw writer is re-read and re-decided (never
//! overwritten blindly), and what cannot be fenced is refused.
#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use lease_objstore::object_store::path::Path;
use lease_objstore::object_store::{
    Attribute, Attributes, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, UpdateVersion,
};
use lease_objstore::{
    AcquireOutcome, AcquireRequest, Backend, FENCING_TOKEN_ATTRIBUTE, FencedStore,
    FencedStoreError, FencingToken, HolderMetadata, HolderToken, LeaseKey, Locker,
    ObjectStoreBackend, StaleToken,
};

use super::{TTL, random_name};

/// Acquires `key` through the backend alone, waiting while it is held, with no renewals: the
/// grant of a holder whose process (renewer included) is about to freeze.
async fn paused_holder(backend: &dyn Backend, key: &str) -> FencingToken {
    let request = AcquireRequest::new(
        LeaseKey::new(key).unwrap(),
        HolderToken::generate(),
        TTL,
        HolderMetadata::new("paused").unwrap(),
    );
    loop {
        match backend.acquire(&request).await.expect("acquire") {
            AcquireOutcome::Acquired(grant) => return grant.fencing,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn stale_of(err: &lease_objstore::object_store::Error) -> Option<StaleToken> {
    StaleToken::find(err).copied()
}

async fn bytes(store: &dyn ObjectStore, path: &Path) -> Vec<u8> {
    store
        .get(path)
        .await
        .expect("get")
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

/// The token recorded on the object, read from the store directly.
async fn recorded(store: &dyn ObjectStore, path: &Path) -> Option<String> {
    let head = GetOptions {
        head: true,
        ..GetOptions::default()
    };
    let result = store.get_opts(path, head).await.expect("head");
    result
        .attributes
        .get(&Attribute::Metadata(FENCING_TOKEN_ATTRIBUTE.into()))
        .map(|v| v.as_ref().to_owned())
}

pub async fn paused_holder_is_refused_after_its_successor_wrote(store: Arc<dyn ObjectStore>) {
    let root = random_name("fenced");
    let backend: Arc<dyn Backend> = Arc::new(ObjectStoreBackend::new(
        Arc::clone(&store),
        &format!("{root}/leases"),
    ));
    let report = Path::from(format!("{root}/data/report.csv"));

    let old = paused_holder(backend.as_ref(), "report").await;
    let old_store = FencedStore::new(Arc::clone(&store), old);
    old_store
        .put(&report, "old holder, first part\n".into())
        .await
        .expect("the holder writes in time");
    // The old holder freezes; its lease expires and a successor takes the key and writes.
    let successor = Locker::from_shared(Arc::clone(&backend))
        .acquire("report")
        .await
        .expect("the successor acquires");
    let new = successor.fencing_token();
    assert!(new > old);
    let written = b"successor's report: 42 rows\n\x00\xff binary tail".to_vec();
    FencedStore::new(Arc::clone(&store), new)
        .put(&report, written.clone().into())
        .await
        .expect("the successor writes");
    // The old holder wakes and writes with its old token.
    let err = old_store
        .put(&report, "old holder, second part\n".into())
        .await
        .unwrap_err();
    assert_eq!(stale_of(&err), Some(StaleToken::new(old, new)), "{err}");
    assert_eq!(bytes(store.as_ref(), &report).await, written, "intact");
    assert_eq!(
        recorded(store.as_ref(), &report).await,
        Some(new.to_string())
    );
    successor.release().await.unwrap();
}

/// Each holder appends a line `token` to one log object by read-modify-write: it reads the
/// object, appends, and writes conditionally on the version it read through its fenced store.
async fn append(
    store: &FencedStore<Arc<dyn ObjectStore>>,
    log: &Path,
) -> lease_objstore::object_store::Result<()> {
    for _ in 0..20 {
        let (mut content, mode) = match store.get(log).await {
            Ok(got) => {
                let version = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                (got.bytes().await?.to_vec(), PutMode::Update(version))
            }
            Err(lease_objstore::object_store::Error::NotFound { .. }) => {
                (Vec::new(), PutMode::Create)
            }
            Err(e) => return Err(e),
        };
        content.extend_from_slice(format!("{}\n", store.token()).as_bytes());
        match store
            .put_opts(log, content.into(), PutOptions::from(mode))
            .await
        {
            Ok(_) => return Ok(()),
            // Someone wrote after our read: read again (a stale token fails on the next round).
            Err(
                lease_objstore::object_store::Error::Precondition { .. }
                | lease_objstore::object_store::Error::AlreadyExists { .. },
            ) => {}
            Err(e) => return Err(e),
        }
    }
    panic!("the log kept changing");
}

pub async fn sixteen_holders_in_succession_leave_only_increasing_tokens(
    store: Arc<dyn ObjectStore>,
) {
    let root = random_name("fenced16");
    let backend: Arc<dyn Backend> = Arc::new(ObjectStoreBackend::new(
        Arc::clone(&store),
        &format!("{root}/leases"),
    ));
    let locker = Locker::builder_shared(Arc::clone(&backend))
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let log = Path::from(format!("{root}/data/log"));
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut holders = Vec::new();
    for i in 0..16 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let jitter = Duration::from_millis(seed % 300);
        let (store, backend, locker, log) = (
            Arc::clone(&store),
            Arc::clone(&backend),
            locker.clone(),
            log.clone(),
        );
        // Every third holder freezes past its deadline before writing; the others pause briefly
        // while holding and release.
        let paused = i % 3 == 1;
        holders.push(tokio::spawn(async move {
            if paused {
                let token = paused_holder(backend.as_ref(), "log").await;
                tokio::time::sleep(TTL * 2 + jitter).await;
                let fenced = FencedStore::new(store, token);
                (token, append(&fenced, &log).await)
            } else {
                let lease = locker.acquire("log").await.expect("acquire");
                let token = lease.fencing_token();
                tokio::time::sleep(jitter / 4).await;
                let fenced = FencedStore::new(store, token);
                let written = append(&fenced, &log).await;
                lease.release().await.expect("release");
                (token, written)
            }
        }));
    }
    let mut written = Vec::new();
    let mut refused = 0;
    for holder in holders {
        let (token, result) = holder.await.expect("holder panicked");
        match result {
            Ok(()) => written.push(token.get()),
            Err(e) => {
                let stale = stale_of(&e).unwrap_or_else(|| panic!("{e}"));
                assert!(stale.current() > token, "{e}");
                refused += 1;
            }
        }
    }
    let text = String::from_utf8(bytes(store.as_ref(), &log).await).unwrap();
    let tokens: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "writes out of token order: {tokens:?}"
    );
    written.sort_unstable();
    assert_eq!(tokens, written, "exactly the admitted writes");
    eprintln!(
        "{} of 16 holders wrote, {refused} refused; tokens {tokens:?}",
        tokens.len()
    );
}

/// What a [`Interposer`] does once, right after the next head read of its path answered.
type Hook = Box<dyn FnOnce() -> (PutPayload, Attributes) + Send>;

/// A store that lets a raw writer write between a fenced store's read and its conditional put,
/// and counts the puts that reach the store.
pub struct Interposer {
    inner: Arc<dyn ObjectStore>,
    hook: Mutex<Option<(Path, Hook)>>,
    puts: AtomicUsize,
}

impl fmt::Debug for Interposer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Interposer({})", self.inner)
    }
}

impl fmt::Display for Interposer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Interposer({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Interposer {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> lease_objstore::object_store::Result<PutResult> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> lease_objstore::object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> lease_objstore::object_store::Result<GetResult> {
        let head = options.head;
        let result = self.inner.get_opts(location, options).await;
        let hook = {
            let mut hook = self.hook.lock().unwrap();
            match hook.take() {
                Some((path, hook)) if head && &path == location => Some(hook),
                other => {
                    *hook = other;
                    None
                }
            }
        };
        if let Some(hook) = hook {
            let (payload, attributes) = hook();
            let opts = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            self.inner
                .put_opts(location, payload, opts)
                .await
                .expect("the raw writer writes");
        }
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, lease_objstore::object_store::Result<Path>>,
    ) -> BoxStream<'static, lease_objstore::object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> BoxStream<'static, lease_objstore::object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> lease_objstore::object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> lease_objstore::object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn with_token(token: Option<u64>) -> Attributes {
    token
        .map(|t| {
            Attributes::from_iter([(
                Attribute::Metadata(FENCING_TOKEN_ATTRIBUTE.into()),
                t.to_string(),
            )])
        })
        .unwrap_or_default()
}

/// A raw writer lands between the fenced store's read and its conditional put: the put fails on
/// the version, the object is read again and the decision made again from what is there now.
pub async fn concurrent_raw_writer_is_reread_and_redecided(store: Arc<dyn ObjectStore>) {
    let root = random_name("raw");
    // (the raw writer's token, what the fenced put with token 5 must end in)
    for (raw_token, outcome) in [(Some(9), "stale"), (None, "unfenced"), (Some(3), "written")] {
        let path = Path::from(format!("{root}/{outcome}"));
        let interposer = Arc::new(Interposer {
            inner: Arc::clone(&store),
            hook: Mutex::new(None),
            puts: AtomicUsize::new(0),
        });
        let fenced = FencedStore::new(
            Arc::clone(&interposer) as Arc<dyn ObjectStore>,
            FencingToken::new(5),
        );
        fenced.put(&path, "mine, first".into()).await.unwrap();
        let raw = format!("raw writer with token {raw_token:?}");
        let raw_for_hook = raw.clone();
        *interposer.hook.lock().unwrap() = Some((
            path.clone(),
            Box::new(move || (raw_for_hook.into(), with_token(raw_token))),
        ));
        let before = interposer.puts.load(Ordering::SeqCst);
        let result = fenced.put(&path, "mine, second".into()).await;
        let fenced_puts = interposer.puts.load(Ordering::SeqCst) - before;
        let now = bytes(store.as_ref(), &path).await;
        match outcome {
            "stale" => {
                let err = result.unwrap_err();
                assert_eq!(
                    stale_of(&err),
                    Some(StaleToken::new(FencingToken::new(5), FencingToken::new(9)))
                );
                assert_eq!(now, raw.as_bytes(), "the newer write is intact");
                assert_eq!(
                    fenced_puts, 1,
                    "one conditional put, then a re-read refused"
                );
            }
            "unfenced" => {
                let err = result.unwrap_err();
                assert!(stale_of(&err).is_none());
                assert!(err.to_string().contains("no fencing token"), "{err}");
                assert_eq!(now, raw.as_bytes(), "the raw write is intact");
                assert_eq!(fenced_puts, 1);
            }
            _ => {
                result.expect("an older raw token is written over after a re-read");
                assert_eq!(now, b"mine, second");
                assert_eq!(
                    fenced_puts, 2,
                    "the failed conditional put, then one on the new version"
                );
                assert_eq!(recorded(store.as_ref(), &path).await.as_deref(), Some("5"));
            }
        }
    }
}

/// Deletes, multipart uploads, copies and renames cannot be made conditional: refused, not done.
/// Create and Update keep their meaning; objects without a token or with a garbled one are not
/// written over unless adopted.
pub async fn what_cannot_be_fenced_is_refused(store: Arc<dyn ObjectStore>) {
    let root = random_name("refused");
    let path = Path::from(format!("{root}/object"));
    let fenced = FencedStore::new(Arc::clone(&store), FencingToken::new(4));
    fenced.put(&path, "kept".into()).await.unwrap();
    let not_supported = |e: lease_objstore::object_store::Error| {
        assert!(
            matches!(e, lease_objstore::object_store::Error::NotSupported { .. }),
            "{e}"
        );
    };
    not_supported(fenced.delete(&path).await.unwrap_err());
    not_supported(fenced.put_multipart(&path).await.err().unwrap());
    let other = Path::from(format!("{root}/copy"));
    not_supported(fenced.copy(&path, &other).await.unwrap_err());
    not_supported(fenced.rename(&path, &other).await.unwrap_err());
    assert_eq!(bytes(store.as_ref(), &path).await, b"kept");

    // Create over an existing object: AlreadyExists, or stale when the object is newer.
    let create = PutOptions::from(PutMode::Create);
    let e = fenced
        .put_opts(&path, "x".into(), create.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(e, lease_objstore::object_store::Error::AlreadyExists { .. }),
        "{e}"
    );
    let older = FencedStore::new(Arc::clone(&store), FencingToken::new(3));
    let e = older.put_opts(&path, "x".into(), create).await.unwrap_err();
    assert_eq!(
        stale_of(&e),
        Some(StaleToken::new(FencingToken::new(3), FencingToken::new(4)))
    );
    // Update on the current version with an older token: stale, although the version matches.
    let meta = store.head(&path).await.unwrap();
    let update = PutOptions::from(PutMode::Update(UpdateVersion {
        e_tag: meta.e_tag,
        version: meta.version,
    }));
    let e = older
        .put_opts(&path, "x".into(), update.clone())
        .await
        .unwrap_err();
    assert!(stale_of(&e).is_some(), "{e}");
    fenced
        .put_opts(&path, "updated".into(), update)
        .await
        .expect("the current token updates its version");
    assert_eq!(bytes(store.as_ref(), &path).await, b"updated");

    // An object without a token, and one with a garbled token.
    for (name, attributes) in [
        ("plain", Attributes::new()),
        (
            "garbled",
            Attributes::from_iter([(Attribute::Metadata(FENCING_TOKEN_ATTRIBUTE.into()), "12abc")]),
        ),
    ] {
        let path = Path::from(format!("{root}/{name}"));
        store
            .put_opts(
                &path,
                "foreign".into(),
                PutOptions {
                    attributes,
                    ..PutOptions::default()
                },
            )
            .await
            .unwrap();
        let e = fenced.put(&path, "mine".into()).await.unwrap_err();
        let source = match &e {
            lease_objstore::object_store::Error::Generic { source, .. } => {
                source.downcast_ref::<FencedStoreError>()
            }
            _ => None,
        };
        match name {
            "plain" => assert!(
                matches!(source, Some(FencedStoreError::Unfenced { .. })),
                "{e}"
            ),
            _ => assert!(
                matches!(source, Some(FencedStoreError::CorruptToken { .. })),
                "{e}"
            ),
        }
        assert_eq!(bytes(store.as_ref(), &path).await, b"foreign");
    }
    let plain = Path::from(format!("{root}/plain"));
    FencedStore::new(Arc::clone(&store), FencingToken::new(4))
        .adopt_unfenced(true)
        .put(&plain, "adopted".into())
        .await
        .expect("adopted");
    assert_eq!(recorded(store.as_ref(), &plain).await.as_deref(), Some("4"));
}
