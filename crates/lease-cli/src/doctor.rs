//! `lease doctor`: checks a store end to end for the first minutes of a deployment, and prints
//! what it checked and what it found — one line per check, nothing it did not check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lease_core::{Backend, ClockModel, HolderToken, LeaseKey, Locker};
use lease_objstore::object_store::{self, ObjectStore, PutMode, PutOptions, UpdateVersion};

use crate::exit::{self, CliError};
use crate::store::{self, Access, Store, StoreUrl};

/// `lease doctor`.
#[derive(clap::Args, Debug)]
pub(crate) struct DoctorArgs {
    /// How long each check may take before it counts as failed.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse, value_name = "DURATION")]
    timeout: Duration,
}

/// One line of the report.
struct Report {
    first_failure: Option<u8>,
}

impl Report {
    fn ok(&self, check: &str, found: &str) {
        println!("ok    {check:<20} {found}");
    }

    fn fail(&mut self, check: &str, code: u8, found: &str) {
        // Stores answer with whole XML documents: their first line says enough.
        let found = found.lines().next().unwrap_or_default();
        println!("FAIL  {check:<20} {found}");
        self.first_failure.get_or_insert(code);
    }

    /// The last line, and the exit code: that of the first failed check.
    fn verdict(&self) -> u8 {
        match self.first_failure {
            None => {
                println!("the store is fit for leases");
                exit::OK
            }
            Some(code) => {
                println!("the store is NOT fit for leases: see FAIL above");
                code
            }
        }
    }
}

/// A short duration for the report: `3.2ms`.
fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

/// Runs every check that applies to `url`'s store; the exit code of the first failed one.
pub(crate) async fn run(url: &StoreUrl, args: &DoctorArgs) -> Result<u8, CliError> {
    let mut report = Report {
        first_failure: None,
    };
    println!("lease doctor: {}", url.redacted());
    let explain = |e: &CliError| {
        let message = store::explain_missing_aws_credentials(url, &e.message, |var| {
            std::env::var_os(var).is_some_and(|v| !v.is_empty())
        })
        .unwrap_or_else(|| e.message.clone());
        url.scrub(&exit::strip_locations(&message))
    };
    let limit = |what: &str| {
        CliError::new(
            exit::UNAVAILABLE,
            format!(
                "no answer within {} ({what})",
                crate::duration::short(args.timeout)
            ),
        )
    };

    // 1. Reach and login (SQL connects and logs in here and creates the table if missing; the
    //    object stores and Azure only build a client, and are reached by the next check).
    let started = Instant::now();
    let connected = tokio::time::timeout(args.timeout, store::connect(url, Access::ReadWrite))
        .await
        .unwrap_or_else(|_| Err(limit("connect")));
    let backend = match connected {
        Ok(backend) => {
            let what = match url.store() {
                Store::Postgres | Store::Mysql | Store::Sqlite { .. } => {
                    "connected, logged in, lease table ready"
                }
                _ => "client configured (credentials are checked by the next request)",
            };
            report.ok("connect", &format!("{what} ({})", ms(started.elapsed())));
            backend
        }
        Err(e) => {
            report.fail("connect", e.code, &explain(&e));
            return Ok(report.verdict());
        }
    };

    // 2. A read: the table, bucket or container is there and we may read it; its round trip.
    let key = LeaseKey::new(format!("lease-doctor/{}", HolderToken::generate()))
        .map_err(|e| CliError::new(exit::SOFTWARE, e.to_string()))?;
    // A read of a missing object in a missing bucket is just "not found" on S3: a listing tells.
    if let Store::Bucket { .. } = url.store() {
        let listed = tokio::time::timeout(args.timeout, backend.list("lease-doctor/"))
            .await
            .map_err(|_| limit("list"))
            .and_then(|r| r.map_err(|e| store::read_error(url, &e.into())));
        if let Err(e) = listed {
            report.fail("bucket", e.code, &explain(&e));
            return Ok(report.verdict());
        }
        report.ok("bucket", "exists and can be listed");
    }
    let mut reads = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let read = tokio::time::timeout(args.timeout, backend.inspect(&key))
            .await
            .map_err(|_| limit("read"))
            .and_then(|r| r.map_err(|e| store::read_error(url, &e.into())));
        match read {
            Ok(_) => reads.push(started.elapsed()),
            Err(e) => {
                report.fail("read", e.code, &explain(&e));
                return Ok(report.verdict());
            }
        }
    }
    reads.sort();
    report.ok(
        "read",
        &format!(
            "the store answers; round trip {} median, {} max of 5 reads",
            ms(reads[reads.len() / 2]),
            ms(reads[reads.len() - 1])
        ),
    );

    // 3. Conditional writes as the store itself sees them (object stores: If-None-Match and
    //    If-Match on a probe object), then the lease protocol on a doctor key.
    if let Store::Bucket { .. } = url.store() {
        match store::objstore_backend(url) {
            Ok(objstore) => {
                let leases = objstore.leases();
                let probe = leases
                    .prefix()
                    .clone()
                    .join("lease-doctor")
                    .join(format!("probe-{}", HolderToken::generate()).as_str());
                let store = Arc::clone(leases.store());
                match tokio::time::timeout(args.timeout, conditional_writes(store.as_ref(), &probe))
                    .await
                {
                    Ok(Ok(found)) => report.ok("conditional writes", &found),
                    Ok(Err(found)) => report.fail("conditional writes", exit::CONFIG, &found),
                    Err(_) => report.fail(
                        "conditional writes",
                        exit::UNAVAILABLE,
                        &limit("conditional writes").message,
                    ),
                }
            }
            Err(e) => report.fail("conditional writes", e.code, &explain(&e)),
        }
    }
    if report.first_failure.is_none() {
        match tokio::time::timeout(args.timeout * 4, exclusion(&backend, &key)).await {
            Ok(Ok(found)) => report.ok("exclusion, fencing", &found),
            Ok(Err(e)) => report.fail("exclusion, fencing", e.code, &explain(&e)),
            Err(_) => report.fail(
                "exclusion, fencing",
                exit::UNAVAILABLE,
                &limit("acquire and release").message,
            ),
        }
    }

    // 4. Whose clock decides expiry.
    let caps = backend.capabilities();
    let clock = match caps.clock {
        ClockModel::StoreClock => format!(
            "the store's clock decides expiry ({}); only clock rate matters, not skew between hosts",
            backend.name()
        ),
        ClockModel::ObservedExpiry => "observed expiry: no clock is trusted; an abandoned lease \
             is taken over after a contender has seen it unchanged for TTL × (1 + drift) + margin"
            .to_owned(),
        _ => "unknown clock model".to_owned(),
    };
    report.ok("clock", &clock);
    report.ok(
        "wake-ups",
        if caps.notifies_waiters {
            "a release wakes waiters at once"
        } else {
            "waiters poll (a release is seen at their next retry)"
        },
    );

    Ok(report.verdict())
}

/// Creates a probe object, then checks that the store refuses a second create (`If-None-Match:
/// *`) and an update on a version that is not the current one (`If-Match`). A store that ignores
/// either would let two contenders both win. The probe is deleted afterwards.
async fn conditional_writes(
    store: &dyn ObjectStore,
    probe: &object_store::path::Path,
) -> Result<String, String> {
    let put = |mode: PutMode| {
        store.put_opts(
            probe,
            "lease doctor probe".into(),
            PutOptions {
                mode,
                ..PutOptions::default()
            },
        )
    };
    let created = put(PutMode::Create)
        .await
        .map_err(|e| format!("cannot create a probe object: {e}"))?;
    let second = put(PutMode::Create).await;
    let stale = put(PutMode::Update(UpdateVersion {
        e_tag: Some("\"lease-doctor-stale-etag\"".into()),
        version: None,
    }))
    .await;
    let _ = object_store::ObjectStoreExt::delete(store, probe).await;
    let _ = created;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Ok(_) => {
            return Err(
                "UNSAFE: a create of an existing object succeeded: the store ignores \
                 If-None-Match, so two contenders could both acquire"
                    .into(),
            );
        }
        Err(e) => return Err(format!("a second create failed oddly: {e}")),
    }
    match stale {
        Err(object_store::Error::Precondition { .. }) => {}
        Ok(_) => {
            return Err(
                "UNSAFE: an update on a stale ETag succeeded: the store ignores If-Match, so a \
                 lease could be taken over while held"
                    .into(),
            );
        }
        Err(object_store::Error::NotImplemented { .. }) => {
            return Err("the store cannot update conditionally (no If-Match)".into());
        }
        Err(e) => return Err(format!("an update on a stale ETag failed oddly: {e}")),
    }
    Ok("create-if-absent and update-if-match are enforced by the store".into())
}

/// One holder acquires, a second is refused, the first releases, the second gets a higher
/// token; both released.
async fn exclusion(backend: &Arc<dyn Backend>, key: &LeaseKey) -> Result<String, CliError> {
    let locker = |_: &str| {
        Locker::builder_shared(Arc::clone(backend))
            .ttl(Duration::from_secs(15))
            .build()
            .map_err(|e| CliError::from_lease(&e.into()))
    };
    let (first, second) = (locker("first")?, locker("second")?);
    let fail = |e: lease_core::Error| CliError::from_lease(&e);
    let Some(lease) = first.try_acquire(key).await.map_err(fail)? else {
        return Err(CliError::new(
            exit::CONFIG,
            "a fresh doctor key was reported held",
        ));
    };
    let t1 = lease.fencing_token().get();
    if second.try_acquire(key).await.map_err(fail)?.is_some() {
        return Err(CliError::new(
            exit::CONFIG,
            "UNSAFE: a second holder was granted a held lease",
        ));
    }
    lease.release().await.map_err(fail)?;
    let Some(next) = second.try_acquire(key).await.map_err(fail)? else {
        return Err(CliError::new(
            exit::CONFIG,
            "a released lease was still reported held",
        ));
    };
    let t2 = next.fencing_token().get();
    next.release().await.map_err(fail)?;
    if t2 <= t1 {
        return Err(CliError::new(
            exit::CONFIG,
            format!("UNSAFE: the next grant's fencing token {t2} is not above {t1}"),
        ));
    }
    Ok(format!(
        "a second holder was refused; after release it got token {t2} > {t1}"
    ))
}
