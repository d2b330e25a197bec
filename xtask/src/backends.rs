//! The backend table: which suite runs for which backend, against which servers. Adding a backend is
//! adding one row to [`BACKENDS`].

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::services::Server;

/// One backend's test suite.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backend {
    /// Name used with `--backend`.
    pub(crate) name: &'static str,
    /// Cargo package.
    pub(crate) package: &'static str,
    /// Pass `--no-default-features`.
    pub(crate) no_default_features: bool,
    /// Features to enable (each must exist in the package, else the row is "not built yet").
    pub(crate) features: &'static [&'static str],
    /// `--test NAME` (must exist, else "not built yet"); `None` runs every test of the package.
    pub(crate) test: Option<&'static str>,
    /// `--bench NAME` for `cargo xtask bench`.
    pub(crate) bench: Option<&'static str>,
    /// Servers the suite cannot run without.
    pub(crate) needs: &'static [Server],
    /// Servers the suite uses when their variable is set.
    pub(crate) optional: &'static [Server],
}

/// Every backend suite.
pub(crate) const BACKENDS: &[Backend] = &[
    Backend {
        name: "memory",
        package: "lease-core",
        no_default_features: false,
        features: &["conformance"],
        test: None,
        bench: None,
        needs: &[],
        optional: &[],
    },
    Backend {
        name: "postgres",
        package: "lease-sql",
        no_default_features: true,
        features: &["postgres"],
        test: Some("postgres"),
        bench: Some("sql"),
        needs: &[Server::Postgres],
        optional: &[],
    },
    // The PostgreSQL kit through PgBouncer in transaction mode (waiters LISTEN on the direct
    // PostgreSQL URL).
    Backend {
        name: "postgres-pgbouncer",
        package: "lease-sql",
        no_default_features: true,
        features: &["postgres"],
        test: Some("pgbouncer"),
        bench: None,
        needs: &[Server::Postgres, Server::Pgbouncer],
        optional: &[],
    },
    Backend {
        name: "mysql",
        package: "lease-sql",
        no_default_features: true,
        features: &["mysql"],
        test: Some("mysql"),
        bench: Some("sql"),
        needs: &[Server::Mysql],
        optional: &[],
    },
    Backend {
        name: "sqlite",
        package: "lease-sql",
        no_default_features: true,
        features: &["sqlite"],
        test: Some("sqlite"),
        bench: Some("sql"),
        needs: &[Server::Sqlite],
        optional: &[],
    },
    Backend {
        name: "cli",
        package: "lease-cli",
        no_default_features: false,
        features: &[],
        test: None,
        bench: None,
        needs: &[Server::Sqlite],
        optional: &[
            Server::Postgres,
            Server::Mysql,
            Server::Azurite,
            Server::S3,
            Server::Redis,
            Server::Pgbouncer,
        ],
    },
    Backend {
        name: "azure",
        package: "lease-azure",
        no_default_features: false,
        features: &[],
        test: Some("azurite"),
        bench: Some("azure"),
        needs: &[Server::Azurite],
        optional: &[],
    },
    Backend {
        name: "objstore-memory",
        package: "lease-objstore",
        no_default_features: false,
        features: &[],
        test: Some("memory"),
        bench: None,
        needs: &[],
        optional: &[],
    },
    Backend {
        name: "objstore-s3",
        package: "lease-objstore",
        no_default_features: false,
        features: &[],
        test: Some("s3"),
        // One bench for both servers: moto, and Azurite when it is up.
        bench: Some("objstore"),
        needs: &[Server::S3],
        optional: &[Server::Azurite],
    },
    Backend {
        name: "objstore-gcs",
        package: "lease-objstore",
        no_default_features: false,
        features: &[],
        test: Some("gcs"),
        bench: None,
        needs: &[Server::Gcs],
        optional: &[],
    },
    Backend {
        name: "objstore-azure",
        package: "lease-objstore",
        no_default_features: false,
        features: &[],
        test: Some("azure"),
        bench: None,
        needs: &[Server::Azurite],
        optional: &[],
    },
    Backend {
        name: "redis",
        package: "lease-redis",
        no_default_features: false,
        features: &[],
        test: Some("redis"),
        bench: Some("redis"),
        needs: &[Server::Redis],
        optional: &[],
    },
];

/// `-E` filterset for the plain workspace test step: everything except the integration tests of
/// packages whose suites run in their own rows, with their servers (in the workspace step they
/// would only skip). Only packages with a built suite may be named: nextest rejects a filter term
/// that matches nothing.
pub(crate) fn workspace_filter<'a>(
    rows_with_suites: impl IntoIterator<Item = &'a Backend>,
) -> String {
    let packages: BTreeSet<&str> = rows_with_suites.into_iter().map(|b| b.package).collect();
    if packages.is_empty() {
        return "all()".to_owned();
    }
    let terms: Vec<String> = packages
        .iter()
        .map(|p| format!("(package({p}) & kind(test))"))
        .collect();
    format!("not ({})", terms.join(" | "))
}

impl Backend {
    /// The cargo arguments selecting this suite's package and features (after `nextest run` or `bench`).
    pub(crate) fn package_args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_string(), self.package.to_string()];
        if self.no_default_features {
            args.push("--no-default-features".into());
        }
        if !self.features.is_empty() {
            args.push("--features".into());
            args.push(self.features.join(","));
        }
        args
    }

    /// `cargo nextest run ...` arguments.
    pub(crate) fn nextest_args(&self) -> Vec<String> {
        let mut args = vec!["nextest".to_string(), "run".to_string()];
        args.extend(self.package_args());
        if let Some(test) = self.test {
            args.push("--test".into());
            args.push(test.into());
        }
        args
    }

    /// `cargo bench ...` arguments, if the row has a bench.
    pub(crate) fn bench_args(&self) -> Option<Vec<String>> {
        let bench = self.bench?;
        let mut args = vec!["bench".to_string()];
        args.extend(self.package_args());
        args.push("--bench".into());
        args.push(bench.into());
        Some(args)
    }

    /// Every server it uses.
    pub(crate) fn servers(&self) -> impl Iterator<Item = Server> + '_ {
        self.needs.iter().chain(self.optional).copied()
    }
}

/// The packages of the workspace as cargo sees them: name → (features, targets as (kind, name)).
#[derive(Debug, Default)]
pub(crate) struct Workspace {
    packages: Vec<PackageInfo>,
}

#[derive(Debug)]
struct PackageInfo {
    name: String,
    features: BTreeSet<String>,
    targets: Vec<(String, String)>,
}

impl Workspace {
    /// Runs `cargo metadata --format-version 1 --no-deps`.
    pub(crate) fn load() -> Result<Self> {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(crate::services::workspace_root())
            .output()
            .context("cannot run cargo metadata")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            bail!("cargo metadata failed: {}", err.join(" "));
        }
        Self::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Parses `cargo metadata` JSON.
    pub(crate) fn parse(json: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(json).context("cargo metadata printed bad JSON")?;
        let mut packages = Vec::new();
        for p in v["packages"]
            .as_array()
            .context("no packages in cargo metadata")?
        {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let features = p["features"]
                .as_object()
                .map(|f| f.keys().cloned().collect())
                .unwrap_or_default();
            let mut targets = Vec::new();
            for t in p["targets"].as_array().into_iter().flatten() {
                let tname = t["name"].as_str().unwrap_or_default().to_string();
                for kind in t["kind"].as_array().into_iter().flatten() {
                    targets.push((kind.as_str().unwrap_or_default().to_string(), tname.clone()));
                }
            }
            packages.push(PackageInfo {
                name,
                features,
                targets,
            });
        }
        Ok(Self { packages })
    }

    /// `Ok(())` if the suite exists, else why it is "not built yet".
    pub(crate) fn suite_exists(&self, b: &Backend) -> Result<(), String> {
        self.exists(b, b.test.map(|t| ("test", t)))
    }

    /// `Ok(())` if the bench exists, else why not.
    pub(crate) fn bench_exists(&self, b: &Backend) -> Result<(), String> {
        match b.bench {
            Some(bench) => self.exists(b, Some(("bench", bench))),
            None => Err("no bench declared".into()),
        }
    }

    fn exists(&self, b: &Backend, target: Option<(&str, &str)>) -> Result<(), String> {
        let Some(p) = self.packages.iter().find(|p| p.name == b.package) else {
            return Err(format!("no package {}", b.package));
        };
        if let Some(missing) = b.features.iter().find(|f| !p.features.contains(**f)) {
            return Err(format!("{} has no feature `{missing}`", b.package));
        }
        match target {
            Some((kind, name)) if !p.targets.iter().any(|(k, n)| k == kind && n == name) => {
                Err(format!("{} has no {kind} target `{name}`", b.package))
            }
            // A whole-package suite needs something with tests in it.
            None if p.targets.is_empty() => Err(format!("{} has no targets", b.package)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METADATA: &str = r#"{"packages":[
        {"name":"lease-core","features":{"conformance":[],"default":[]},
         "targets":[{"name":"lease_core","kind":["lib"]}]},
        {"name":"lease-sql","features":{"postgres":[],"sqlite":[]},
         "targets":[{"name":"lease_sql","kind":["lib"]},{"name":"postgres","kind":["test"]},
                    {"name":"sql","kind":["bench"]}]}
    ],"workspace_root":"/x"}"#;

    fn row(name: &str) -> &'static Backend {
        BACKENDS.iter().find(|b| b.name == name).unwrap()
    }

    #[test]
    fn names_are_unique_and_packages_look_right() {
        let mut names: Vec<_> = BACKENDS.iter().map(|b| b.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BACKENDS.len());
        assert!(BACKENDS.iter().all(|b| b.package.starts_with("lease-")));
    }

    #[test]
    fn existence_from_metadata() {
        let ws = Workspace::parse(METADATA).unwrap();
        assert_eq!(ws.suite_exists(row("memory")), Ok(()));
        assert_eq!(ws.suite_exists(row("postgres")), Ok(()));
        assert_eq!(ws.bench_exists(row("postgres")), Ok(()));
        assert!(
            ws.suite_exists(row("mysql"))
                .unwrap_err()
                .contains("feature `mysql`")
        );
        assert!(
            ws.suite_exists(row("sqlite"))
                .unwrap_err()
                .contains("test target `sqlite`")
        );
        assert!(
            ws.suite_exists(row("cli"))
                .unwrap_err()
                .contains("no package lease-cli")
        );
        assert!(ws.bench_exists(row("memory")).is_err());
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            row("postgres").nextest_args().join(" "),
            "nextest run -p lease-sql --no-default-features --features postgres --test postgres"
        );
        assert_eq!(
            row("memory").nextest_args().join(" "),
            "nextest run -p lease-core --features conformance"
        );
        assert_eq!(
            row("cli").nextest_args().join(" "),
            "nextest run -p lease-cli"
        );
        assert_eq!(
            row("sqlite").bench_args().unwrap().join(" "),
            "bench -p lease-sql --no-default-features --features sqlite --bench sql"
        );
        assert!(row("memory").bench_args().is_none());
    }

    #[test]
    fn workspace_filter_leaves_every_suite_to_its_row() {
        let built = [row("memory"), row("postgres"), row("mysql"), row("cli")];
        let filter = workspace_filter(built);
        assert_eq!(
            filter,
            "not ((package(lease-cli) & kind(test)) | (package(lease-core) & kind(test)) \
             | (package(lease-sql) & kind(test)))"
        );
        assert_eq!(workspace_filter([]), "all()");
    }

    #[test]
    fn bad_metadata_is_an_error() {
        assert!(Workspace::parse("not json").is_err());
        assert!(Workspace::parse("{}").is_err());
    }
}
