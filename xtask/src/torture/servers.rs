//! The servers a torture run owns: Azurite with its blob data on disk (`--location`) and moto's
//! S3 (in memory: moto has no on-disk persistence). The run starts them itself, restarts them
//! mid-run as a fault (stop with SIGTERM, start again on the same port) and stops them at the
//! end. A server the user named in the environment is not ours: it is used as is and never
//! restarted, and the run says so.
//!
//! What a restart must look like from the checker's side differs: Azurite keeps its blobs and
//! their metadata (the fencing counters) across it, so a fencing regression after an Azurite
//! restart is a violation — but it forgets every active lease (it reloads the expiry times from
//! disk as strings, which then never compare as later than now: every lease reads "expired"), so
//! the run checks that with a probe lease ([`LeaseProbe`]) and records it; moto comes back empty —
//! every lock object, hence every fencing counter, is gone — and the run records that as a data
//! loss of the store ([`Restart::lost_data`]). The checker reports both apart from library
//! violations.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::journal::mono_ns;
use crate::proc::{self, ProcId};
use crate::services::{self, Origin, Paths, Server, Service};
use crate::{env, ports};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// One bucket request to a server that the contenders keep busy (moto is one Python process).
const BUCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the bucket requests after a restart are retried.
const BUCKET_RETRIES_FOR: Duration = Duration::from_secs(90);

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Azurite's blob service, data in a directory of the run.
    Azurite,
    /// moto's S3, in memory.
    Moto,
    /// `redis-server` with an append-only file fsynced on every write: a restart keeps every
    /// lease (their absolute expiry times) and every fencing counter.
    Redis,
}

impl Kind {
    fn server(self) -> Server {
        match self {
            Kind::Azurite => Server::Azurite,
            Kind::Moto => Server::S3,
            Kind::Redis => Server::Redis,
        }
    }

    /// The server's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Azurite => "Azurite",
            Kind::Moto => "moto S3",
            Kind::Redis => "Redis",
        }
    }

    /// What the run prints about a server of its own.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Kind::Azurite => "Azurite (blob data on disk)",
            Kind::Moto => "moto S3 (in memory)",
            Kind::Redis => "redis-server (AOF, appendfsync always)",
        }
    }

    /// How long a stopped server gets to exit before SIGKILL: Azurite saves its metadata
    /// database on SIGTERM (and otherwise only every 5 s), moto has nothing to save.
    fn stop_grace(self) -> Duration {
        match self {
            Kind::Azurite => Duration::from_secs(10),
            Kind::Moto => Duration::from_secs(2),
            // Flushes the append-only file on SIGTERM (every write was fsynced already).
            Kind::Redis => Duration::from_secs(5),
        }
    }

    /// The HTTP path that answers once the server is ready.
    fn probe_path(self) -> String {
        match self {
            Kind::Azurite => format!("/{}?comp=list", env::AZURITE_ACCOUNT),
            Kind::Moto | Kind::Redis => "/".into(),
        }
    }

    /// Whether the server on `port` is ready.
    fn ready(self, port: u16) -> bool {
        match self {
            Kind::Redis => services::redis_ping("127.0.0.1", port).is_ok(),
            _ => proc::http_status("127.0.0.1", port, &self.probe_path(), PROBE_TIMEOUT).is_ok(),
        }
    }
}

/// The endpoint a backend's workers are given, and whether the run may restart its server.
pub(crate) enum StoreServer {
    /// Started by this run: restartable.
    Owned(OwnedServer),
    /// From the user's environment (`var`): used as is, never restarted.
    Given {
        /// The endpoint.
        url: String,
        /// The variable it came from.
        var: &'static str,
    },
}

impl StoreServer {
    /// The server's endpoint: `http://127.0.0.1:PORT` (moto) or `…/devstoreaccount1` (Azurite).
    pub(crate) fn url(&self) -> String {
        match self {
            StoreServer::Owned(s) => s.url(),
            StoreServer::Given { url, .. } => url.clone(),
        }
    }

    /// One line for the run's output.
    pub(crate) fn describe(&self) -> String {
        match self {
            StoreServer::Owned(s) => format!(
                "{} started by this run on 127.0.0.1:{} (pid {}): restarted mid-run",
                s.kind.title(),
                s.port,
                s.id.pid
            ),
            StoreServer::Given { url, var } => format!(
                "{url} from {var}: not started by this run, so the server-restart fault is \
                 SKIPPED (unset {var} to let the run start and restart its own)"
            ),
        }
    }
}

/// The user's endpoint for `kind` if they set one, else a server of our own.
pub(crate) fn provide(kind: Kind, dir: &Path, instance: &str, bucket: &str) -> Result<StoreServer> {
    let var = env::var_for(kind.server());
    if let Some(url) = env::user_value(var) {
        let (host, port) = env::host_port(&url, Some(80))
            .with_context(|| format!("{var}={url} is not a scheme://HOST:PORT URL"))?;
        if kind == Kind::Redis {
            proc::tcp_connect(&host, port, PROBE_TIMEOUT).map(drop)
        } else {
            proc::http_status(&host, port, "/", PROBE_TIMEOUT).map(drop)
        }
        .with_context(|| format!("{url} from {var} does not answer"))?;
        if kind == Kind::Moto {
            ensure_bucket(&host, port, bucket).with_context(|| {
                format!("bucket {bucket} on {url} (make it first on an S3 server that is not moto)")
            })?;
        }
        return Ok(StoreServer::Given { url, var });
    }
    let server = OwnedServer::start(kind, dir, instance)?;
    if kind == Kind::Moto {
        create_bucket(server.port, bucket)?;
    }
    Ok(StoreServer::Owned(server))
}

/// A server process this run started.
pub(crate) struct OwnedServer {
    kind: Kind,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    /// Working directory, log file and (Azurite) data directory live here.
    dir: PathBuf,
    child: Child,
    id: ProcId,
    /// Names the record in `target/rig/state` (cleaned up by the rig if this run dies).
    instance: String,
}

/// What one restart did.
#[derive(Debug, Clone)]
pub(crate) struct Restart {
    /// When the stop signal was sent (`CLOCK_MONOTONIC` ns).
    pub(crate) down_ns: u64,
    /// When the new process answered again.
    pub(crate) up_ns: u64,
    /// The server came back without the run's data (moto: the bucket is gone).
    pub(crate) lost_data: bool,
}

impl OwnedServer {
    fn start(kind: Kind, dir: &Path, instance: &str) -> Result<Self> {
        let paths = Paths::of_workspace();
        let (program, leading_args) = match kind {
            Kind::Azurite => (services::install_azurite(&paths)?, Vec::new()),
            Kind::Moto => services::moto_command(&paths)?,
            Kind::Redis => (services::redis_program()?, Vec::new()),
        };
        let dir = dir.join(match kind {
            Kind::Azurite => "azurite",
            Kind::Moto => "moto",
            Kind::Redis => "redis",
        });
        std::fs::create_dir_all(&dir)?;
        let mut last = None;
        for _ in 0..3 {
            // Not the usual ports: a `services up` session may have them.
            let port = ports::choose(0, &[])?;
            let args: Vec<String> = leading_args
                .iter()
                .cloned()
                .chain(launch_args(kind, port, &dir))
                .collect();
            match services::spawn_and_wait_for(
                &program,
                &args,
                &dir.join("server.log"),
                &dir,
                port,
                || kind.ready(port),
            ) {
                Ok((child, id)) => {
                    let server = Self {
                        kind,
                        program,
                        args,
                        port,
                        dir,
                        child,
                        id,
                        instance: instance.to_string(),
                    };
                    server.record()?;
                    return Ok(server);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    /// The endpoint workers use (before the proxy is put in front).
    pub(crate) fn url(&self) -> String {
        match self.kind {
            Kind::Azurite => format!("http://127.0.0.1:{}/{}", self.port, env::AZURITE_ACCOUNT),
            Kind::Moto => format!("http://127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    fn record(&self) -> Result<()> {
        services::record_spawned(
            &self.instance,
            vec![Service {
                server: self.kind.server(),
                url: self.url(),
                origin: Origin::Spawned {
                    proc: self.id.clone(),
                },
                database: None,
            }],
        )
    }

    fn stop(&mut self) {
        self.id.stop(self.kind.stop_grace());
        let _ = proc::wait_deadline(&mut self.child, Duration::from_secs(2));
    }

    /// Stops the server and starts it again on the same port with the same data directory;
    /// blocks until it answers (run it off the async runtime). For moto, the bucket is made
    /// again (an operator restoring service would), after noting that it was gone.
    pub(crate) fn restart(&mut self, bucket: &str) -> Result<Restart> {
        let down_ns = mono_ns();
        self.stop();
        // The port is free once the process is gone; a socket in TIME_WAIT does not stop
        // either server from listening again, but give a late exit a moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (child, id) = loop {
            let (kind, port) = (self.kind, self.port);
            match services::spawn_and_wait_for(
                &self.program,
                &self.args,
                &self.dir.join("server.log"),
                &self.dir,
                self.port,
                || kind.ready(port),
            ) {
                Ok(started) => break started,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context(format!(
                        "{} did not come back on port {}",
                        self.kind.title(),
                        self.port
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        self.child = child;
        self.id = id;
        self.record()?;
        let lost_data = match self.kind {
            Kind::Moto => {
                // Asked first, then made: a PUT that timed out may have landed, after which a
                // second look would say the bucket survived.
                let gone = retrying(|| bucket_status(self.port, bucket))? == 404;
                if gone {
                    retrying(|| create_bucket(self.port, bucket))?;
                }
                gone
            }
            Kind::Azurite | Kind::Redis => false,
        };
        Ok(Restart {
            down_ns,
            up_ns: mono_ns(),
            lost_data,
        })
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        self.stop();
        services::forget_spawned(&self.instance);
    }
}

/// Command-line arguments of a server on `port` with its files in `dir`.
fn launch_args(kind: Kind, port: u16, dir: &Path) -> Vec<String> {
    match kind {
        // On disk, unlike the rig's Azurite: a restart must keep every lease and counter.
        Kind::Azurite => vec![
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            port.to_string(),
            "--location".into(),
            dir.join("data").display().to_string(),
            "--disableTelemetry".into(),
            "--skipApiVersionCheck".into(),
        ],
        Kind::Moto => vec![
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        // On disk, fsynced on every write: a restart must keep every lease and counter.
        Kind::Redis => services::redis_args(port, dir, true),
    }
}

/// Retries `call` for [`BUCKET_RETRIES_FOR`]: the restarted server answers its probe, but the
/// contenders' requests queue in front of ours.
fn retrying<T>(mut call: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + BUCKET_RETRIES_FOR;
    loop {
        match call() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// HTTP status of a HEAD of the bucket (moto answers 404 for one it does not have).
fn bucket_status(port: u16, bucket: &str) -> Result<u16> {
    proc::http_call(
        "127.0.0.1",
        port,
        "HEAD",
        &format!("/{bucket}"),
        BUCKET_TIMEOUT,
    )
}

/// moto makes a bucket on an unsigned PUT.
fn create_bucket(port: u16, bucket: &str) -> Result<()> {
    ensure_bucket("127.0.0.1", port, bucket)
}

fn ensure_bucket(host: &str, port: u16, bucket: &str) -> Result<()> {
    let path = format!("/{bucket}");
    let status = proc::http_call(host, port, "PUT", &path, BUCKET_TIMEOUT)?;
    if !(200..300).contains(&status)
        && proc::http_call(host, port, "HEAD", &path, BUCKET_TIMEOUT)? != 200
    {
        bail!("creating bucket {bucket}: HTTP {status}");
    }
    Ok(())
}

/// A lease taken on the store just before a restart, looked at just after: is it still held?
/// (Azurite 3.35 answers no: its on-disk metadata keeps the lease's expiry time as a string.)
pub(crate) struct LeaseProbe {
    backend: lease_azure::AzureBlobBackend,
    key: lease_core::LeaseKey,
    holder: lease_core::HolderToken,
}

impl LeaseProbe {
    /// Takes a 60 s lease (never renewed) on a key no contender uses, straight to the server.
    pub(crate) async fn take(endpoint: &str, container: &str) -> Result<Self> {
        use lease_core::{AcquireOutcome, AcquireRequest, Backend, HolderMetadata, HolderToken};
        let backend = super::worker::azure_backend(endpoint, container)?;
        let key: lease_core::LeaseKey = "torture-probe/survives-restart".parse()?;
        let holder = HolderToken::generate();
        let request = AcquireRequest::new(
            key.clone(),
            holder,
            Duration::from_secs(60),
            HolderMetadata::default(),
        );
        match backend.acquire(&request).await? {
            AcquireOutcome::Acquired(_) => Ok(Self {
                backend,
                key,
                holder,
            }),
            _ => bail!("the probe key is held by someone else"),
        }
    }

    /// Whether the probe's lease is still in force on the restarted server; releases it.
    pub(crate) async fn survived(self) -> Result<bool> {
        use lease_core::{Backend, RecordState, ReleaseRequest};
        let record = self.backend.inspect(&self.key).await?;
        let held =
            record.is_some_and(|r| r.state == RecordState::Held && r.holder == Some(self.holder));
        let _ = self
            .backend
            .release(&ReleaseRequest::new(self.key, self.holder))
            .await;
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azurite_keeps_its_data_on_disk_and_moto_has_no_such_option() {
        let dir = Path::new("/tmp/run");
        let azurite = launch_args(Kind::Azurite, 10_001, dir);
        let at = azurite.iter().position(|a| a == "--location").unwrap();
        assert_eq!(azurite[at + 1], "/tmp/run/data");
        assert!(!azurite.iter().any(|a| a == "--inMemoryPersistence"));
        assert!(azurite.contains(&"10001".to_string()));
        let moto = launch_args(Kind::Moto, 5001, dir);
        assert_eq!(moto, ["-H", "127.0.0.1", "-p", "5001"]);
    }
}
