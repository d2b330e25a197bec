//! A rig for one run: the servers a set of suites needs, from containers or local servers, with the
//! environment variables that point the suites at them. Torn down at the end of the run (a session from
//! `cargo xtask services up` is reused and left running).

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use crate::services::{self, Origin, Server, State};
use crate::{containers, docker, env};

/// How the user asked for servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModeRequest {
    /// Containers if a Docker daemon answers, else local.
    Auto,
    /// Local servers.
    Local,
    /// Containers (falls back to local, saying so, when Docker is absent).
    Containers,
}

/// Decides containers (`true`) or local (`false`), printing one line when Docker is absent.
pub(crate) fn use_containers(request: ModeRequest) -> bool {
    if request == ModeRequest::Local {
        return false;
    }
    match docker::detect() {
        Ok(endpoint) => {
            eprintln!(
                "xtask: Docker answers at {endpoint}; using containers (--local to use local servers)"
            );
            true
        }
        Err(reason) => {
            eprintln!("xtask: Docker not available: {reason}; using local servers");
            false
        }
    }
}

/// A server ready for tests.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Which server.
    pub(crate) server: Server,
    /// For tables: what and where.
    pub(crate) describe: String,
    /// Variables to set for the suites.
    pub(crate) env: Vec<(String, String)>,
}

impl Endpoint {
    /// An endpoint with no variables yet.
    pub(crate) fn new(server: Server, describe: String) -> Self {
        Self {
            server,
            describe,
            env: Vec::new(),
        }
    }

    /// Adds a variable.
    pub(crate) fn var(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_string(), value.into()));
        self
    }
}

/// The servers of one run.
pub(crate) struct Rig {
    endpoints: BTreeMap<Server, Endpoint>,
    failures: BTreeMap<Server, String>,
    ephemeral: Option<services::Instance>,
    held: Vec<Box<dyn Any>>,
    /// Debian's `prometheus`, for the CLI suite's real scrape (`LEASE_TEST_PROMETHEUS`).
    prometheus: Option<std::path::PathBuf>,
}

fn endpoints_of(state: &State, via: &str) -> Vec<Endpoint> {
    let all_env = services::env_of(state);
    state
        .services
        .iter()
        .map(|s| {
            let origin = match &s.origin {
                Origin::User => "from your environment",
                _ => via,
            };
            // A SQLite directory is long and says nothing new: only servers get a host:port.
            let place =
                env::host_port(&s.url, None).map_or_else(String::new, |(h, p)| format!(" {h}:{p}"));
            let mut ep = Endpoint::new(
                s.server,
                format!("{}{place} ({origin})", s.server.local_title()),
            );
            let main = env::var_for(s.server);
            for (k, v) in &all_env {
                let belongs = k == main
                    || (s.server == Server::Azurite && k == env::AZURITE_ACCOUNT_KEY)
                    || (s.server == Server::S3
                        && k.starts_with("LEASE_TEST_S3_")
                        && k != env::S3_ENDPOINT);
                if belongs {
                    ep = ep.var(k, v.clone());
                }
            }
            ep
        })
        .collect()
}

impl Rig {
    /// Brings up `needed` servers. Never fails for one server: a server that cannot start is recorded
    /// in [`Rig::failure`].
    pub(crate) fn up(containers: bool, needed: &BTreeSet<Server>) -> Result<Rig> {
        let mut rig = Rig {
            endpoints: BTreeMap::new(),
            failures: BTreeMap::new(),
            ephemeral: None,
            held: Vec::new(),
            prometheus: None,
        };
        let mut local: Vec<Server> = Vec::new();
        for &server in needed {
            if containers
                && containers::has_image(server)
                && env::user_value(env::var_for(server)).is_none()
            {
                eprintln!(
                    "xtask: starting the {} container (first start pulls the image)",
                    server.name()
                );
                match containers::start(server) {
                    Ok((handle, ep)) => {
                        eprintln!("xtask: {:<8} up   {}", server.name(), ep.describe);
                        rig.held.push(handle);
                        rig.endpoints.insert(server, ep);
                    }
                    Err(e) => {
                        let reason = format!("container did not start: {e:#}");
                        eprintln!("xtask: {:<8} FAILED: {reason}", server.name());
                        rig.failures.insert(server, reason);
                    }
                }
            } else {
                local.push(server);
            }
        }
        // Local servers: reuse the `services up` session where it has them, start the rest for this run.
        if !local.is_empty()
            && let Some(session) = services::session()?
        {
            let healthy: Vec<Server> = local
                .iter()
                .copied()
                .filter(|s| {
                    session
                        .get(*s)
                        .is_some_and(|svc| services::probe(svc).is_ok())
                })
                .collect();
            if !healthy.is_empty() {
                let names: Vec<&str> = healthy.iter().map(|s| s.name()).collect();
                eprintln!(
                    "xtask: reusing the `services up` session for {}",
                    names.join(", ")
                );
            }
            for ep in endpoints_of(&session, "session") {
                if healthy.contains(&ep.server) {
                    rig.endpoints.insert(ep.server, ep);
                }
            }
            local.retain(|s| !healthy.contains(s));
        }
        if !local.is_empty() {
            // A local PgBouncer fronts the PostgreSQL container when there is one.
            let postgres_upstream = rig
                .endpoints
                .get(&Server::Postgres)
                .filter(|_| !local.contains(&Server::Postgres))
                .and_then(|ep| ep.env.iter().find(|(k, _)| k == env::POSTGRES_URL))
                .map(|(_, v)| v.clone());
            let instance = services::up_ephemeral(&local, postgres_upstream.as_deref())?;
            for ep in endpoints_of(&instance.state, "local") {
                rig.endpoints.insert(ep.server, ep);
            }
            for (server, reason) in &instance.state.failures {
                rig.failures.insert(*server, reason.clone());
            }
            rig.ephemeral = Some(instance);
        }
        // The CLI suite (the row that needs SQLite) has a real Prometheus scrape `lease exec`; the
        // test fails under LEASE_TEST_REQUIRE=1 when the rig could not provide one.
        if needed.contains(&Server::Sqlite) {
            match services::install_prometheus() {
                Ok(program) => rig.prometheus = Some(program),
                Err(e) => eprintln!("xtask: prometheus unavailable: {e:#}"),
            }
        }
        Ok(rig)
    }

    /// The endpoint of `server`, if it is up.
    pub(crate) fn endpoint(&self, server: Server) -> Option<&Endpoint> {
        self.endpoints.get(&server)
    }

    /// Why `server` is not up.
    pub(crate) fn failure(&self, server: Server) -> Option<&str> {
        self.failures.get(&server).map(String::as_str)
    }

    /// Servers that failed, with reasons.
    pub(crate) fn failures(&self) -> &BTreeMap<Server, String> {
        &self.failures
    }

    /// Variables for a suite: every server that is up, plus `LEASE_TEST_REQUIRE=1` in CI.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .endpoints
            .values()
            .flat_map(|e| e.env.clone())
            .collect();
        if let Some(program) = &self.prometheus {
            out.push((env::PROMETHEUS.into(), program.display().to_string()));
        }
        if env::in_ci() {
            out.push((env::REQUIRE.into(), "1".into()));
        }
        out
    }

    /// Stops what this run started (containers, local processes, databases).
    pub(crate) fn down(mut self) -> Result<()> {
        let containers = std::mem::take(&mut self.held);
        if !containers.is_empty() {
            eprintln!("xtask: removing {} container(s)", containers.len());
        }
        drop(containers);
        if let Some(instance) = self.ephemeral.take() {
            instance.down()?;
        }
        Ok(())
    }
}
