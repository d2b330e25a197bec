//! Store URLs: parsing every scheme, redacting secrets, the default location, connecting.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lease_core::{Backend, MemoryBackend};

use crate::exit::{self, CliError};

/// The schemes `lease` understands, for messages.
pub(crate) const KNOWN_SCHEMES: &str =
    "sqlite, postgres, mysql, memory, azblob, s3, gs, az, file, redis, rediss, redis+unix";

/// What a store URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Store {
    /// This process's memory (`memory://`): leases are not shared with other processes.
    Memory,
    /// A SQLite database file.
    Sqlite { path: PathBuf },
    /// A PostgreSQL database (the URL is passed to the driver as written).
    Postgres,
    /// A MySQL or MariaDB database (the URL is passed to the driver as written).
    Mysql,
    /// Azure Blob Storage leases on blobs in `container` of `account`, named `prefix/KEY`.
    AzBlob {
        account: String,
        container: String,
        prefix: String,
    },
    /// An object-store bucket or container, with an optional key prefix.
    Bucket {
        scheme: &'static str,
        bucket: String,
        prefix: String,
    },
    /// A local directory used as an object store.
    File { dir: PathBuf },
    /// A Redis (or Valkey) server: `redis://`, `rediss://` (TLS) or `redis+unix://` (the URL is
    /// passed to the client as written).
    Redis,
}

/// A parsed store URL. Keeps the original text for the driver; shows only [`StoreUrl::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StoreUrl {
    raw: String,
    scheme: String,
    store: Store,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreUrl")
            .field("url", &self.redacted())
            .field("store", &self.store)
            .finish()
    }
}

impl StoreUrl {
    /// Parses `text`. Errors are usage errors with the URL redacted.
    pub(crate) fn parse(text: &str) -> Result<Self, CliError> {
        let bad =
            |why: &str| CliError::usage(format!("invalid store URL '{}': {why}", redact(text)));
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(bad(
                "expected SCHEME://…, for example sqlite:///var/lib/lease/leases.db",
            ));
        };
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(bad("expected SCHEME://…"));
        }
        let lower = scheme.to_ascii_lowercase();
        let (before_query, _query) = rest.split_once('?').unwrap_or((rest, ""));
        let store = match lower.as_str() {
            "memory" => {
                if !before_query.is_empty() && before_query != "/" {
                    return Err(bad("memory:// takes no host or path"));
                }
                Store::Memory
            }
            "sqlite" => {
                if before_query.is_empty() {
                    return Err(bad(
                        "sqlite:// needs a file path, as in sqlite:///var/lib/lease/leases.db",
                    ));
                }
                if before_query == ":memory:" {
                    return Err(bad(
                        "an in-memory SQLite database is not shared between processes; use memory:// for that",
                    ));
                }
                Store::Sqlite {
                    path: PathBuf::from(before_query),
                }
            }
            "postgres" | "postgresql" => {
                check_authority(rest).map_err(|why| bad(&why))?;
                Store::Postgres
            }
            "mysql" | "mariadb" => {
                check_authority(rest).map_err(|why| bad(&why))?;
                if authority(rest).is_empty() {
                    return Err(bad(
                        "mysql:// needs a host, as in mysql://user@db.example:3306/leases",
                    ));
                }
                Store::Mysql
            }
            "azblob" => {
                let (account, path) = before_query.split_once('/').unwrap_or((before_query, ""));
                let (container, prefix) = path.split_once('/').unwrap_or((path, ""));
                if account.is_empty() || container.is_empty() {
                    return Err(bad("expected azblob://ACCOUNT/CONTAINER[/PREFIX]"));
                }
                if account.contains('@') || account.contains(':') {
                    return Err(bad(
                        "put the account key in AZURE_STORAGE_KEY (or a SAS in AZURE_STORAGE_SAS_TOKEN), not in the URL's host",
                    ));
                }
                Store::AzBlob {
                    account: account.to_owned(),
                    container: container.to_owned(),
                    prefix: prefix.trim_matches('/').to_owned(),
                }
            }
            "s3" | "gs" | "az" => {
                let (bucket, prefix) = before_query.split_once('/').unwrap_or((before_query, ""));
                if bucket.is_empty() {
                    return Err(bad(&format!("expected {lower}://BUCKET[/PREFIX]")));
                }
                if bucket.contains('@') || bucket.contains(':') {
                    return Err(bad(
                        "credentials go in the environment (AWS_*, GOOGLE_*, AZURE_* variables), not in the URL",
                    ));
                }
                let scheme = match lower.as_str() {
                    "s3" => "s3",
                    "gs" => "gs",
                    _ => "az",
                };
                Store::Bucket {
                    scheme,
                    bucket: bucket.to_owned(),
                    prefix: prefix.trim_matches('/').to_owned(),
                }
            }
            "redis" | "rediss" => {
                check_authority(rest).map_err(|why| bad(&why))?;
                if authority(rest)
                    .rsplit_once('@')
                    .map_or(authority(rest), |(_, h)| h)
                    .is_empty()
                {
                    return Err(bad(&format!(
                        "{lower}:// needs a host, as in {lower}://:PASSWORD@cache.example:6379/0"
                    )));
                }
                Store::Redis
            }
            "redis+unix" => {
                if !before_query.starts_with('/') {
                    return Err(bad("expected redis+unix:///PATH/TO/SOCKET[?db=N]"));
                }
                Store::Redis
            }
            "file" => {
                if !before_query.starts_with('/') {
                    return Err(bad("expected file:///ABSOLUTE/DIR"));
                }
                Store::File {
                    dir: PathBuf::from(before_query),
                }
            }
            _ => {
                return Err(CliError::usage(format!(
                    "unknown store scheme '{scheme}://' in '{}'; known schemes: {KNOWN_SCHEMES}",
                    redact(text)
                )));
            }
        };
        Ok(Self {
            raw: text.to_owned(),
            scheme: lower,
            store,
        })
    }

    /// What the URL names.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The scheme, lower case.
    pub(crate) fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The URL with passwords, keys and tokens replaced by `***`: the only form ever shown.
    pub(crate) fn redacted(&self) -> String {
        redact(&self.raw)
    }

    /// The original text, for the driver only.
    fn raw(&self) -> &str {
        &self.raw
    }

    /// Removes every secret of this URL from `text` (for messages from drivers, which might echo
    /// them).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.raw, &self.redacted());
        for secret in secrets(&self.raw) {
            if secret.len() >= 3 {
                out = out.replace(&secret, "***");
            }
        }
        out
    }
}

/// The part between `://` and the first `/`, `?` or `#`.
fn authority(rest: &str) -> &str {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// Checks `[user[:password]@]host[:port][,host[:port]…]` loosely: ports must be numbers.
fn check_authority(rest: &str) -> Result<(), String> {
    let auth = authority(rest);
    let hosts = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    for host in hosts.split(',') {
        // An IPv6 literal: [::1]:5432
        let port = if let Some(after) = host.strip_prefix('[') {
            match after.split_once(']') {
                Some((_, tail)) => tail.strip_prefix(':'),
                None => return Err("unclosed '[' in host".into()),
            }
        } else {
            host.split_once(':').map(|(_, p)| p)
        };
        if let Some(port) = port
            && (port.is_empty() || port.parse::<u16>().is_err())
        {
            // The "port" may be the start of a password holding a raw '/', '?' or '#': not echoed.
            return Err(
                "the port is not a number from 0 to 65535 (a password containing \
                        '/', '?', '#' or '@' must be percent-encoded)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Where the userinfo password lies in `rest` (the URL after `://`): from after the user's `:` to
/// the `@` before the host. A password must be percent-encoded, but people paste raw ones: one
/// holding `/`, `?` or `#` ends the authority early, so when the authority has a `:` and no `@`
/// while an `@` comes later, everything up to the last `@` is taken as the password. That may hide
/// more than the password (an `@` in a query value); it never shows part of one.
fn password_span(rest: &str) -> Option<(usize, usize)> {
    let auth = authority(rest);
    let at = match auth.rfind('@') {
        Some(at) => at,
        None if auth.contains(':') => rest.rfind('@')?,
        None => return None,
    };
    let colon = rest[..at].find(':')?;
    Some((colon + 1, at))
}

/// Whether a query parameter with this name carries a secret.
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const EXACT: &[&str] = &[
        "sig",
        "pwd",
        "pass",
        "auth",
        "sas",
        "signature",
        "credential",
        "credentials",
    ];
    const PARTS: &[&str] = &["password", "secret", "token", "key"];
    EXACT.contains(&name.as_str()) || PARTS.iter().any(|p| name.contains(p))
}

/// The URL with the userinfo password and secret query values replaced by `***`.
///
/// Works on any text, parseable or not, so error messages about a bad URL are redacted too.
pub(crate) fn redact(url: &str) -> String {
    let (head, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (auth, tail) = match password_span(rest) {
        Some((start, end)) => {
            let host_end = end + authority(&rest[end..]).len();
            (
                format!("{}***{}", &rest[..start], &rest[end..host_end]),
                &rest[host_end..],
            )
        }
        None => {
            let (auth, tail) = rest.split_at(authority(rest).len());
            (auth.to_owned(), tail)
        }
    };
    let (path, query_and_fragment) = match tail.find('?') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    let mut out = head + &auth + path;
    if let Some(q) = query_and_fragment.strip_prefix('?') {
        let (query, fragment) = match q.split_once('#') {
            Some((query, fragment)) => (query, Some(fragment)),
            None => (q, None),
        };
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) if is_secret_param(name) && !value.is_empty() => {
                    format!("{name}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
        if let Some(fragment) = fragment {
            out.push('#');
            out.push_str(fragment);
        }
    }
    out
}

/// The secret values in `url` (password, secret query values), for scrubbing driver messages.
fn secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    if let Some((start, end)) = password_span(rest)
        && end > start
    {
        found.push(rest[start..end].to_owned());
    }
    if let Some((_, q)) = rest.split_once('?') {
        let q = q.split_once('#').map_or(q, |(q, _)| q);
        for pair in q.split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && is_secret_param(name)
                && !value.is_empty()
            {
                found.push(value.to_owned());
            }
        }
    }
    found
}

/// Redacts every `scheme://…` word in free text (clap's messages echo arguments).
pub(crate) fn redact_words(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            if word.contains("://") || word.contains('@') {
                redact(word)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The state directory: `$XDG_STATE_HOME/lease`, else `$HOME/.local/state/lease`.
pub(crate) fn default_state_dir(
    xdg_state_home: Option<&str>,
    home: Option<&str>,
) -> Option<PathBuf> {
    if let Some(dir) = xdg_state_home.filter(|d| Path::new(d).is_absolute()) {
        return Some(Path::new(dir).join("lease"));
    }
    let home = home.filter(|h| !h.is_empty())?;
    Some(Path::new(home).join(".local/state/lease"))
}

/// The default store: `sqlite://` on `leases.db` in the state directory.
pub(crate) fn default_store_url() -> Result<String, CliError> {
    let xdg = std::env::var("XDG_STATE_HOME").ok();
    let home = std::env::var("HOME").ok();
    let dir = default_state_dir(xdg.as_deref(), home.as_deref()).ok_or_else(|| {
        CliError::usage("no store given and neither XDG_STATE_HOME nor HOME is set; pass --store URL or set LEASE_STORE")
    })?;
    Ok(format!("sqlite://{}", dir.join("leases.db").display()))
}

/// What a subcommand will do with the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// `status`, `watch`, `list`: never create a file, a directory, a database or a table.
    ReadOnly,
    /// `exec`, `elect`, `break`, `demo`: create what is missing (a SQLite file, the lease table).
    ReadWrite,
}

/// Connects to the store. With [`Access::ReadWrite`] a SQLite file (and its directory) and every
/// SQL lease table are created on first use; with [`Access::ReadOnly`] nothing is.
pub(crate) async fn connect(url: &StoreUrl, access: Access) -> Result<Arc<dyn Backend>, CliError> {
    tracing::debug!(store = %url.redacted(), ?access, "connecting");
    match url.store() {
        Store::Memory => Ok(Arc::new(MemoryBackend::new())),
        Store::Sqlite { path } => sql::sqlite(url, path, access).await,
        Store::Postgres => sql::postgres(url, access).await,
        Store::Mysql => sql::mysql(url, access).await,
        // Azure creates nothing for read-only commands: only acquire creates the container.
        Store::AzBlob { .. } => azure(url),
        Store::Bucket { .. } => objstore(url),
        Store::Redis => redis(url).await,
        Store::File { .. } => Err(CliError::usage(format!(
            "{}:// stores cannot hold leases: local files have no conditional update, so two \
             holders could both write; use sqlite:///PATH for a store on this machine",
            url.scheme()
        ))),
    }
}

/// `s3://BUCKET[/PREFIX]`, `gs://BUCKET[/PREFIX]`, `az://CONTAINER[/PREFIX]` through
/// `lease-objstore`, with credentials and endpoint from the environment as object_store reads
/// them (`AWS_*`, `GOOGLE_*`, `AZURE_*`; see docs/backends/objstore.md).
fn objstore(url: &StoreUrl) -> Result<Arc<dyn Backend>, CliError> {
    Ok(Arc::new(objstore_backend(url)?))
}

/// The object-store backend of an `s3://`, `gs://` or `az://` URL (`lease doctor` also probes
/// its store directly).
pub(crate) fn objstore_backend(
    url: &StoreUrl,
) -> Result<lease_objstore::ObjectStoreBackend, CliError> {
    lease_objstore::ObjectStoreBackend::from_url(url.raw(), [("", ""); 0]).map_err(|e| {
        let code = match e {
            lease_objstore::BuildError::InvalidUrl { .. }
            | lease_objstore::BuildError::Unsupported(_) => exit::USAGE,
            _ => exit::CONFIG,
        };
        CliError::new(
            code,
            url.scrub(&format!("cannot use store {}: {e}", url.redacted())),
        )
    })
}

/// The variables object_store takes AWS credentials from, before it falls back to the EC2
/// instance metadata service (it reads neither `~/.aws/credentials` nor `AWS_PROFILE`).
const AWS_CREDENTIAL_SOURCES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_SKIP_SIGNATURE",
];

/// For an `s3://` store with no AWS credentials anywhere object_store looks, its last resort —
/// the EC2 instance metadata service at 169.254.169.254 — fails with a message about that
/// service that says nothing useful off EC2. This says what is missing and where credentials are
/// looked for instead. `None` for any other message, scheme, or when credentials were given.
pub(crate) fn explain_missing_aws_credentials(
    url: &StoreUrl,
    message: &str,
    is_set: impl Fn(&str) -> bool,
) -> Option<String> {
    let metadata_failure = message.contains("169.254.169.254")
        || message.contains("/latest/api/token")
        || message.contains("/latest/meta-data");
    let in_url = url.raw().contains("access_key_id=");
    if url.scheme() != "s3"
        || !metadata_failure
        || in_url
        || AWS_CREDENTIAL_SOURCES.iter().any(|v| is_set(v))
    {
        return None;
    }
    Some(format!(
        "no AWS credentials found for {}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
         AWS_SESSION_TOKEN for temporary ones), or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN; \
         ECS task credentials and the EC2 instance metadata service are tried last, and the \
         metadata service gave none here (~/.aws/credentials and AWS_PROFILE are not read)",
        url.redacted()
    ))
}

/// `azblob://ACCOUNT/CONTAINER[/PREFIX]`, credentials from the environment as the Azure CLI reads
/// them (`AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_KEY` / `AZURE_STORAGE_SAS_TOKEN`), the
/// endpoint from `LEASE_AZURE_BLOB_ENDPOINT` or an `endpoint=` query parameter (Azurite).
fn azure(url: &StoreUrl) -> Result<Arc<dyn Backend>, CliError> {
    let backend = lease_azure::AzureBlobBackend::from_url(url.raw()).map_err(|e| {
        let mut err = CliError::from_lease(&e.into());
        err.message = url.scrub(&format!(
            "cannot use store {}: {}",
            url.redacted(),
            err.message
        ));
        err
    })?;
    Ok(Arc::new(backend))
}

/// `redis://`, `rediss://`, `redis+unix://` through `lease-redis`, keys under `lease:`. Nothing is
/// created on connecting: the scripts are loaded on first use.
async fn redis(url: &StoreUrl) -> Result<Arc<dyn Backend>, CliError> {
    let backend = lease_redis::RedisBackend::connect(url.raw())
        .await
        .map_err(|e| {
            let mut err = CliError::from_lease(&e);
            err.message = url.scrub(&format!(
                "cannot use store {}: {}",
                url.redacted(),
                err.message
            ));
            err
        })?;
    Ok(Arc::new(backend))
}

/// A library error from `store`, as one line. A SQL lease table that does not exist (only
/// read-only commands can meet one: the others create it) is said in those words.
pub(crate) fn read_error(url: &StoreUrl, e: &lease_core::Error) -> CliError {
    if sql::is_missing_table(e) {
        return CliError::new(
            exit::CONFIG,
            format!(
                "no leases table in store {}: no lease was ever taken there (lease exec creates it)",
                url.redacted()
            ),
        );
    }
    let mut err = CliError::from_lease(e);
    err.message = url.scrub(&err.message);
    err
}

/// `LEASE_STORE` as the command gets it: the same URL without its password and secret query
/// parameters (a `lease` run by the command still finds the store, with credentials from
/// `PGPASSWORD`, `~/.pgpass` or the environment); `None` when there is nothing to remove.
pub(crate) fn without_secrets(url: &str) -> Option<String> {
    if secrets(url).is_empty() {
        return None;
    }
    let (head, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (auth, tail) = rest.split_at(auth_end);
    let auth = match auth.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some(("", _password)) => host.to_owned(),
            Some((user, _password)) => format!("{user}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => auth.to_owned(),
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let (query, fragment) = query
        .split_once('#')
        .map_or((query, None), |(q, f)| (q, Some(f)));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            !pair
                .split_once('=')
                .is_some_and(|(name, _)| is_secret_param(name))
        })
        .collect();
    let mut out = format!("{head}://{auth}{path}");
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Some(out)
}

mod sql {
    use std::future::Future;
    use std::str::FromStr;
    use std::time::Duration;

    use lease_sql::SqlOptions;
    use lease_sql::sqlx;

    use super::*;

    /// A command needs few connections: an operation, the renewer, and PostgreSQL's LISTEN.
    fn options() -> SqlOptions {
        SqlOptions::default()
            .with_max_connections(3)
            .with_acquire_timeout(Duration::from_secs(5))
    }

    fn failed(url: &StoreUrl, what: &str, e: &lease_core::Error) -> CliError {
        let mut err = CliError::from_lease(e);
        err.message = url.scrub(&format!(
            "cannot {what} store {}: {}",
            url.redacted(),
            err.message
        ));
        err
    }

    /// Whether `e` says the lease table does not exist (PostgreSQL 42P01, MySQL 42S02 / 1146,
    /// SQLite "no such table").
    pub(super) fn is_missing_table(e: &lease_core::Error) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(sqlx::Error::Database(db)) = s.downcast_ref::<sqlx::Error>() {
                let code = db.code().unwrap_or_default();
                return code == "42P01"
                    || code == "42S02"
                    || db.message().starts_with("no such table");
            }
            source = s.source();
        }
        false
    }

    /// Opens the backend through its pool while one direct connection attempt runs beside it.
    /// The pool retries a server it cannot reach until its acquire timeout and then says only
    /// "pool timed out"; the direct attempt tells why (refused, DNS, TLS) at once. Other direct
    /// failures (authentication, a missing database) are left to the pool, which reports them
    /// just as fast and classified.
    async fn connect_reporting_cause<C: sqlx::Connection, B>(
        url: &StoreUrl,
        direct: Result<<C as sqlx::Connection>::Options, sqlx::Error>,
        pool: impl Future<Output = Result<B, lease_core::Error>>,
    ) -> Result<B, CliError> {
        let unreachable = async {
            let Ok(options) = direct else {
                return std::future::pending().await;
            };
            match C::connect_with(&options).await {
                Err(e @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_))) => e,
                Ok(connection) => {
                    let _ = connection.close().await;
                    std::future::pending().await
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            opened = pool => opened.map_err(|e| failed(url, "connect to", &e)),
            cause = unreachable => Err(CliError::new(
                exit::UNAVAILABLE,
                url.scrub(&format!(
                    "cannot connect to store {}: {}",
                    url.redacted(),
                    exit::one_line_chain(&cause)
                )),
            )),
        }
    }

    /// Creates the table if missing. Several processes starting at once may race on
    /// `CREATE TABLE IF NOT EXISTS` (PostgreSQL can report a duplicate type); a retry settles it.
    async fn migrate<F: Future<Output = Result<(), lease_core::Error>>>(
        url: &StoreUrl,
        access: Access,
        mut run: impl FnMut() -> F,
    ) -> Result<(), CliError> {
        if access == Access::ReadOnly {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            match run().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 3 && e.kind() != lease_core::ErrorKind::InvalidInput => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "creating the lease table failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(failed(url, "prepare", &e)),
            }
        }
    }

    pub(super) async fn sqlite(
        url: &StoreUrl,
        path: &Path,
        access: Access,
    ) -> Result<Arc<dyn Backend>, CliError> {
        if access == Access::ReadOnly {
            return sqlite_read_only(url, path).await;
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                CliError::new(
                    exit::CONFIG,
                    format!("cannot create the directory {}: {e}", parent.display()),
                )
            })?;
        }
        let backend = lease_sql::SqliteBackend::connect_with(url.raw(), options())
            .await
            .map_err(|e| failed(url, "open", &e))?;
        migrate(url, access, || backend.migrate()).await?;
        Ok(Arc::new(backend))
    }

    /// Opens an existing SQLite file read-only: a missing file is an error, never created.
    async fn sqlite_read_only(url: &StoreUrl, path: &Path) -> Result<Arc<dyn Backend>, CliError> {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
        if !path.is_file() {
            return Err(CliError::new(
                exit::CONFIG,
                format!(
                    "store {} does not exist: no file {} (status, watch and list never create one; lease exec does)",
                    url.redacted(),
                    path.display()
                ),
            ));
        }
        let sqlx_error = |e: sqlx::Error| {
            CliError::new(
                exit::CONFIG,
                url.scrub(&format!(
                    "cannot open store {} read-only: {}",
                    url.redacted(),
                    exit::one_line_chain(&e)
                )),
            )
        };
        let connect = SqliteConnectOptions::from_str(url.raw())
            .map_err(sqlx_error)?
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(connect)
            .await
            .map_err(sqlx_error)?;
        Ok(Arc::new(lease_sql::SqliteBackend::from_pool(
            pool,
            options(),
        )))
    }

    /// `?pooler=transaction` in a `postgres://` URL: the server is behind PgBouncer (or
    /// another pooler) in transaction mode (docs/backends/sql.md). sqlx ignores the parameter.
    pub(super) fn transaction_pooler(raw: &str) -> bool {
        raw.split_once('?').is_some_and(|(_, query)| {
            query
                .split(['&', '#'])
                .any(|pair| pair.eq_ignore_ascii_case("pooler=transaction"))
        })
    }

    pub(super) async fn postgres(
        url: &StoreUrl,
        access: Access,
    ) -> Result<Arc<dyn Backend>, CliError> {
        use sqlx::postgres::{PgConnectOptions, PgConnection};
        let options = if transaction_pooler(url.raw()) {
            // Waiters poll (LISTEN needs a session); `lease` polls every half second anyway.
            options().with_pooler(lease_sql::Pooler::transaction())
        } else {
            options()
        };
        let backend = connect_reporting_cause::<PgConnection, _>(
            url,
            PgConnectOptions::from_str(url.raw()),
            lease_sql::PostgresBackend::connect_with(url.raw(), options),
        )
        .await?;
        migrate(url, access, || backend.migrate()).await?;
        Ok(Arc::new(backend))
    }

    pub(super) async fn mysql(
        url: &StoreUrl,
        access: Access,
    ) -> Result<Arc<dyn Backend>, CliError> {
        use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
        // sqlx only knows mysql://; mariadb:// is our alias for it.
        let raw = match url.raw().split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => {
                format!("mysql://{rest}")
            }
            _ => url.raw().to_owned(),
        };
        let backend = connect_reporting_cause::<MySqlConnection, _>(
            url,
            MySqlConnectOptions::from_str(&raw),
            lease_sql::MySqlBackend::connect_with(&raw, options()),
        )
        .await?;
        migrate(url, access, || backend.migrate()).await?;
        Ok(Arc::new(backend))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooler_transaction_in_a_postgres_url_turns_on_transaction_pooling() {
        assert!(sql::transaction_pooler(
            "postgres://app@pgbouncer:6432/ops?sslmode=require&pooler=transaction"
        ));
        assert!(sql::transaction_pooler(
            "postgres://app@pgbouncer:6432/ops?pooler=transaction"
        ));
        assert!(!sql::transaction_pooler("postgres://app@db:5432/ops"));
        assert!(!sql::transaction_pooler(
            "postgres://app@db/ops?pooler=session"
        ));
        assert!(!sql::transaction_pooler(
            "postgres://pooler=transaction@db/ops"
        ));
    }

    #[test]
    fn an_s3_store_without_credentials_says_so_instead_of_the_metadata_probe() {
        let probe = "s3 backend: Generic S3 error: Error performing PUT \
                     http://169.254.169.254/latest/api/token in 29ms - Server returned non-2xx \
                     status code: 403 Forbidden";
        let s3 = StoreUrl::parse("s3://bucket/leases").unwrap();
        let none = |_: &str| false;
        let told = explain_missing_aws_credentials(&s3, probe, none).unwrap();
        assert!(
            told.starts_with("no AWS credentials found for s3://bucket/leases"),
            "{told}"
        );
        assert!(
            told.contains("AWS_ACCESS_KEY_ID") && !told.contains("169.254"),
            "{told}"
        );
        // Credentials in the environment: the real error stays.
        assert_eq!(
            explain_missing_aws_credentials(&s3, probe, |v| v == "AWS_ACCESS_KEY_ID"),
            None
        );
        // Other errors and other schemes are left alone.
        assert_eq!(
            explain_missing_aws_credentials(&s3, "NoSuchBucket", none),
            None
        );
        let gs = StoreUrl::parse("gs://bucket/leases").unwrap();
        assert_eq!(explain_missing_aws_credentials(&gs, probe, none), None);
    }

    fn parse(text: &str) -> Store {
        StoreUrl::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .store
    }

    fn err(text: &str) -> CliError {
        StoreUrl::parse(text).expect_err(text)
    }

    #[test]
    fn sqlite_paths_relative_and_absolute() {
        assert_eq!(
            parse("sqlite://leases.db"),
            Store::Sqlite {
                path: "leases.db".into()
            }
        );
        assert_eq!(
            parse("sqlite://dir/leases.db"),
            Store::Sqlite {
                path: "dir/leases.db".into()
            }
        );
        assert_eq!(
            parse("sqlite:///var/lib/l.db"),
            Store::Sqlite {
                path: "/var/lib/l.db".into()
            }
        );
        assert_eq!(
            parse("SQLITE:///x.db?mode=rwc"),
            Store::Sqlite {
                path: "/x.db".into()
            }
        );
        assert_eq!(err("sqlite://").code, exit::USAGE);
        assert!(err("sqlite://:memory:").message.contains("memory://"));
    }

    #[test]
    fn sql_servers() {
        assert_eq!(parse("postgres://u:p@db:5432/leases"), Store::Postgres);
        assert_eq!(
            parse("postgresql:///leases?host=/run/postgresql"),
            Store::Postgres
        );
        assert_eq!(parse("postgres://a:5432,b:5433/db"), Store::Postgres);
        assert_eq!(parse("postgres://[::1]:5432/db"), Store::Postgres);
        assert_eq!(parse("mysql://root@127.0.0.1:3306/test"), Store::Mysql);
        assert_eq!(parse("mariadb://root@db/test"), Store::Mysql);
        let e = err("postgres://u:hunter2@db:54x2/leases");
        assert_eq!(e.code, exit::USAGE);
        assert!(e.message.contains("54x2"), "{}", e.message);
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert!(err("mysql:///test").message.contains("needs a host"));
        assert!(err("postgres://[::1/db").message.contains("unclosed"));
    }

    #[test]
    fn azure_and_object_stores() {
        assert_eq!(
            parse(
                "azblob://devstoreaccount1/leases?endpoint=http://127.0.0.1:10000/devstoreaccount1"
            ),
            Store::AzBlob {
                account: "devstoreaccount1".into(),
                container: "leases".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse("azblob://acct/leases/team/a/"),
            Store::AzBlob {
                account: "acct".into(),
                container: "leases".into(),
                prefix: "team/a".into()
            }
        );
        assert!(
            err("azblob://account")
                .message
                .contains("ACCOUNT/CONTAINER")
        );
        assert!(
            err("azblob://acct:key@x/c")
                .message
                .contains("AZURE_STORAGE_KEY")
        );
        assert_eq!(
            parse("s3://bucket/team/leases/"),
            Store::Bucket {
                scheme: "s3",
                bucket: "bucket".into(),
                prefix: "team/leases".into()
            }
        );
        assert_eq!(
            parse("gs://b"),
            Store::Bucket {
                scheme: "gs",
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse("az://container/p"),
            Store::Bucket {
                scheme: "az",
                bucket: "container".into(),
                prefix: "p".into()
            }
        );
        assert!(err("s3://").message.contains("s3://BUCKET"));
        assert_eq!(
            parse("file:///srv/leases"),
            Store::File {
                dir: "/srv/leases".into()
            }
        );
        assert!(err("file://relative").message.contains("ABSOLUTE"));
        assert_eq!(parse("redis://:pw@cache:6379/0"), Store::Redis);
        assert_eq!(parse("rediss://cache.example/1"), Store::Redis);
        assert_eq!(parse("redis+unix:///run/redis.sock?db=2"), Store::Redis);
        assert!(err("redis://").message.contains("needs a host"));
        assert!(err("redis+unix://relative").message.contains("SOCKET"));
        let e = err("redis://:pw@cache:notaport/0");
        assert!(e.message.contains("port"), "{}", e.message);
        assert_eq!(parse("memory://"), Store::Memory);
        assert!(err("memory://host").message.contains("no host"));
    }

    #[test]
    fn bad_and_unknown_urls_are_usage_errors() {
        let e = err("not a url");
        assert_eq!(e.code, exit::USAGE);
        assert!(e.message.starts_with("invalid store URL 'not a url'"));
        let e = err("etcd://u:secret@cache/0");
        assert_eq!(e.code, exit::USAGE);
        assert!(
            e.message.contains("unknown store scheme 'etcd://'"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("secret"), "{}", e.message);
        assert!(err("://x").message.contains("SCHEME://"));
    }

    #[test]
    fn redacts_userinfo_passwords() {
        assert_eq!(
            redact("postgres://app:s3cr3t@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(redact("postgres://a:b:c@h/d"), "postgres://a:***@h/d");
        // An '@' in the password: the last '@' ends the userinfo.
        assert_eq!(redact("postgres://a:p@ss@h/d"), "postgres://a:***@h/d");
        assert_eq!(redact("sqlite:///var/lib/l.db"), "sqlite:///var/lib/l.db");
        assert_eq!(redact("user:pw@host"), "user:***@host");
        // A raw '/', '?' or '#' in the password ends the authority early: still hidden whole.
        assert_eq!(redact("postgres://a:p/w@h/d"), "postgres://a:***@h/d");
        assert_eq!(redact("mysql://a:p?w#x@h:3306/d"), "mysql://a:***@h:3306/d");
        // The price: an '@' in a query value after a host:port hides the path (never a secret).
        assert_eq!(redact("postgres://h:5432/d?u=a@b"), "postgres://h:***@b");
        assert_eq!(
            redact("postgres://h:5432/d?u=ab"),
            "postgres://h:5432/d?u=ab"
        );
        let e = StoreUrl::parse("postgres://a:pw/secret@h/d").unwrap_err();
        assert!(!e.message.contains("secret"), "{}", e.message);
        assert!(e.message.contains("percent-encoded"), "{}", e.message);
    }

    #[test]
    fn redacts_secret_query_parameters() {
        assert_eq!(
            redact("azblob://acct/c?sv=2024-01-01&sig=AbC%2Bd&se=2026"),
            "azblob://acct/c?sv=2024-01-01&sig=***&se=2026"
        );
        assert_eq!(
            redact("postgres://h/db?password=x&sslmode=require&application_name=a"),
            "postgres://h/db?password=***&sslmode=require&application_name=a"
        );
        assert_eq!(
            redact("s3://b/p?access_key_id=AK&secret_access_key=SK&token=T#frag"),
            "s3://b/p?access_key_id=***&secret_access_key=***&token=***#frag"
        );
        assert_eq!(
            redact("az://c?account_key=K&AccountKey=K2"),
            "az://c?account_key=***&AccountKey=***"
        );
        assert_eq!(
            redact("x://h/p?flag&empty_token="),
            "x://h/p?flag&empty_token="
        );
    }

    #[test]
    fn scrub_removes_secrets_echoed_by_drivers() {
        let url = StoreUrl::parse("postgres://app:hunter2@db/x?sslpassword=pw99").unwrap();
        let msg =
            "connect to postgres://app:hunter2@db/x?sslpassword=pw99 failed; auth hunter2 pw99";
        let clean = url.scrub(msg);
        assert!(
            !clean.contains("hunter2") && !clean.contains("pw99"),
            "{clean}"
        );
        assert!(clean.contains("postgres://app:***@db/x"), "{clean}");
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    #[test]
    fn the_command_gets_the_url_without_its_secrets() {
        assert_eq!(
            without_secrets("postgres://app:hunter2@db/x?sslmode=require&password=p&sig=s#f"),
            Some("postgres://app@db/x?sslmode=require#f".to_owned())
        );
        assert_eq!(
            without_secrets("postgres://:pw@db/x"),
            Some("postgres://db/x".to_owned())
        );
        assert_eq!(without_secrets("postgres://app@db/x"), None);
        assert_eq!(without_secrets("sqlite:///var/lib/l.db"), None);
    }

    #[test]
    fn redact_words_in_free_text() {
        assert_eq!(
            redact_words("unexpected argument 'postgres://u:pw@h/d' found"),
            "unexpected argument 'postgres://u:***@h/d' found"
        );
    }

    #[test]
    fn default_state_dir_follows_xdg_then_home() {
        assert_eq!(
            default_state_dir(Some("/x/state"), Some("/home/u")),
            Some("/x/state/lease".into())
        );
        assert_eq!(
            default_state_dir(Some("relative"), Some("/home/u")),
            Some("/home/u/.local/state/lease".into())
        );
        assert_eq!(
            default_state_dir(None, Some("/home/u")),
            Some("/home/u/.local/state/lease".into())
        );
        assert_eq!(default_state_dir(None, None), None);
        assert_eq!(default_state_dir(Some(""), Some("")), None);
    }

    #[tokio::test]
    async fn file_stores_are_refused_with_the_reason() {
        let parsed = StoreUrl::parse("file:///tmp/x").unwrap();
        let e = connect(&parsed, Access::ReadOnly)
            .await
            .expect_err("file://");
        assert_eq!(e.code, exit::USAGE);
        assert!(e.message.contains("sqlite:///"), "{e}");
    }
}
