//! The environment variables that connect backend test suites to their servers.
//!
//! This module is the one place that names them; `docs/testing.md` has the same table (a unit test
//! below checks that every name appears there). Backend crates read these names in their tests.

use crate::services::Server;

/// URL of a PostgreSQL database for the test run, e.g. `postgres://postgres@127.0.0.1:5432/lease_..`.
pub(crate) const POSTGRES_URL: &str = "LEASE_TEST_POSTGRES_URL";
/// URL of a MySQL/MariaDB database, e.g. `mysql://root@127.0.0.1:3306/lease_..`.
pub(crate) const MYSQL_URL: &str = "LEASE_TEST_MYSQL_URL";
/// A fresh directory for SQLite files.
pub(crate) const SQLITE_DIR: &str = "LEASE_TEST_SQLITE_DIR";
/// Azurite blob endpoint including the account, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
pub(crate) const AZURITE_BLOB_URL: &str = "LEASE_TEST_AZURITE_BLOB_URL";
/// Account key for the Azurite endpoint (the well-known public Azurite key by default).
pub(crate) const AZURITE_ACCOUNT_KEY: &str = "LEASE_TEST_AZURITE_ACCOUNT_KEY";
/// S3 endpoint, e.g. `http://127.0.0.1:5000`.
pub(crate) const S3_ENDPOINT: &str = "LEASE_TEST_S3_ENDPOINT";
/// S3 access key id (moto accepts anything; MinIO wants `minioadmin`).
pub(crate) const S3_ACCESS_KEY_ID: &str = "LEASE_TEST_S3_ACCESS_KEY_ID";
/// S3 secret access key.
pub(crate) const S3_SECRET_ACCESS_KEY: &str = "LEASE_TEST_S3_SECRET_ACCESS_KEY";
/// S3 region.
pub(crate) const S3_REGION: &str = "LEASE_TEST_S3_REGION";
/// fake-gcs-server endpoint, e.g. `http://127.0.0.1:4443`.
pub(crate) const GCS_ENDPOINT: &str = "LEASE_TEST_GCS_ENDPOINT";
/// URL of a Redis server the tests may write keys in (never flushed), e.g. `redis://127.0.0.1:6380/0`.
pub(crate) const REDIS_URL: &str = "LEASE_TEST_REDIS_URL";
/// The `redis-server` program the rig, the torture and the Redis tests start servers from
/// (default: the one on the `PATH`).
pub(crate) const REDIS_SERVER: &str = "LEASE_TEST_REDIS_SERVER";
/// PgBouncer in transaction pooling mode in front of the PostgreSQL server, e.g.
/// `postgres://postgres@127.0.0.1:6432/lease_..` (the same database as `LEASE_TEST_POSTGRES_URL`).
pub(crate) const PGBOUNCER_URL: &str = "LEASE_TEST_PGBOUNCER_URL";
/// Debian's `prometheus` program, which the CLI suite starts to scrape `lease exec --metrics-addr`.
pub(crate) const PROMETHEUS: &str = "LEASE_TEST_PROMETHEUS";
/// `1`: a backend test whose variable is missing fails instead of skipping. Set by xtask when `CI` is true.
pub(crate) const REQUIRE: &str = "LEASE_TEST_REQUIRE";

/// Azurite's documented development account.
pub(crate) const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's documented development key (public, the same in every Azurite).
pub(crate) const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Region told to S3 clients.
pub(crate) const DEFAULT_S3_REGION: &str = "us-east-1";

/// One row of the variable table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EnvVar {
    /// The variable's name.
    pub(crate) name: &'static str,
    /// The server it points at, if it is a server's main variable.
    pub(crate) server: Option<Server>,
}

/// Every variable the rig sets or honours.
pub(crate) const ALL: &[EnvVar] = &[
    EnvVar {
        name: POSTGRES_URL,
        server: Some(Server::Postgres),
    },
    EnvVar {
        name: MYSQL_URL,
        server: Some(Server::Mysql),
    },
    EnvVar {
        name: SQLITE_DIR,
        server: Some(Server::Sqlite),
    },
    EnvVar {
        name: AZURITE_BLOB_URL,
        server: Some(Server::Azurite),
    },
    EnvVar {
        name: AZURITE_ACCOUNT_KEY,
        server: None,
    },
    EnvVar {
        name: S3_ENDPOINT,
        server: Some(Server::S3),
    },
    EnvVar {
        name: S3_ACCESS_KEY_ID,
        server: None,
    },
    EnvVar {
        name: S3_SECRET_ACCESS_KEY,
        server: None,
    },
    EnvVar {
        name: S3_REGION,
        server: None,
    },
    EnvVar {
        name: GCS_ENDPOINT,
        server: Some(Server::Gcs),
    },
    EnvVar {
        name: REDIS_URL,
        server: Some(Server::Redis),
    },
    EnvVar {
        name: REDIS_SERVER,
        server: None,
    },
    EnvVar {
        name: PGBOUNCER_URL,
        server: Some(Server::Pgbouncer),
    },
    EnvVar {
        name: PROMETHEUS,
        server: None,
    },
    EnvVar {
        name: REQUIRE,
        server: None,
    },
];

/// The main variable of a server.
pub(crate) fn var_for(server: Server) -> &'static str {
    ALL.iter()
        .find(|v| v.server == Some(server))
        .map(|v| v.name)
        .expect("every server has a variable")
}

/// Whether a variable's value means "yes" (`1`, `true`, `yes`, `on`, any case).
pub(crate) fn is_truthy(value: Option<&str>) -> bool {
    matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

/// Whether we run in CI (`CI` set to a true value).
pub(crate) fn in_ci() -> bool {
    is_truthy(std::env::var("CI").ok().as_deref())
}

/// A variable the user set to a non-empty value.
pub(crate) fn user_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Host and port of a URL like `scheme://user:pass@host:port/path?query`.
///
/// Returns `None` when there is no `scheme://` or no host; the port falls back to `default_port`.
pub(crate) fn host_port(url: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
        // [v6]:port
        let (h, after) = stripped.split_once(']')?;
        let port = after.strip_prefix(':').map(str::parse::<u16>);
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse::<u16>())),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(Ok(p)) => p,
        Some(Err(_)) => return None,
        None => default_port?,
    };
    Some((host, port))
}

/// Parses a `--backend a,b` style list against the known names; unknown names are an error.
pub(crate) fn parse_selection(
    requested: &[String],
    known: &[&'static str],
) -> anyhow::Result<Vec<&'static str>> {
    if requested.is_empty() {
        return Ok(known.to_vec());
    }
    let mut out = Vec::new();
    for name in requested.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let Some(found) = known.iter().find(|k| k.eq_ignore_ascii_case(name)) else {
            anyhow::bail!("unknown name `{name}`; known: {}", known.join(", "));
        };
        if !out.contains(found) {
            out.push(*found);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthy_values() {
        for v in ["1", "true", "TRUE", "yes", " on "] {
            assert!(is_truthy(Some(v)), "{v}");
        }
        for v in ["0", "false", "", "no", "off", "maybe"] {
            assert!(!is_truthy(Some(v)), "{v}");
        }
        assert!(!is_truthy(None));
    }

    #[test]
    fn host_port_of_database_urls() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/lease_1", None),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(
            host_port("mysql://root:secret@db.example:3307/x?ssl=false", None),
            Some(("db.example".into(), 3307))
        );
        assert_eq!(
            host_port("postgres://localhost/db", Some(5432)),
            Some(("localhost".into(), 5432))
        );
        assert_eq!(
            host_port("http://[::1]:10000/devstoreaccount1", None),
            Some(("::1".into(), 10000))
        );
        assert_eq!(
            host_port("http://127.0.0.1:5000", None),
            Some(("127.0.0.1".into(), 5000))
        );
    }

    #[test]
    fn host_port_rejects_garbage() {
        assert_eq!(host_port("127.0.0.1:5432", None), None);
        assert_eq!(host_port("http://:80/", None), None);
        assert_eq!(host_port("http://host:notaport/", None), None);
        assert_eq!(host_port("http://host/", None), None);
    }

    #[test]
    fn selection_parsing() {
        let known = ["memory", "postgres", "mysql"];
        assert_eq!(parse_selection(&[], &known).unwrap(), known.to_vec());
        let req = vec![
            "Postgres".to_string(),
            " memory".into(),
            "postgres".into(),
            String::new(),
        ];
        assert_eq!(
            parse_selection(&req, &known).unwrap(),
            vec!["postgres", "memory"]
        );
        let err = parse_selection(&["oracle".to_string()], &known).unwrap_err();
        assert!(err.to_string().contains("oracle"));
    }

    #[test]
    fn every_server_has_one_variable() {
        for server in Server::ALL {
            assert_eq!(
                ALL.iter().filter(|v| v.server == Some(*server)).count(),
                1,
                "{server:?}"
            );
            assert!(var_for(*server).starts_with("LEASE_TEST_"));
        }
    }

    #[test]
    fn docs_name_every_variable() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/testing.md");
        let docs = std::fs::read_to_string(path).expect("docs/testing.md exists");
        for var in ALL {
            assert!(
                docs.contains(var.name),
                "docs/testing.md does not mention {}",
                var.name
            );
        }
    }
}
