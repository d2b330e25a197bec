//! A `redis-server` of the test's own, on a free port, that the test may stop and restart.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lease_redis::HolderToken;
use tokio::process::{Child, Command};

/// A random lowercase suffix for key prefixes.
pub fn random_suffix() -> String {
    HolderToken::generate().to_string()[..12].to_owned()
}

/// A private server: `redis-server` from `LEASE_TEST_REDIS_SERVER` or the `PATH`.
pub struct OwnServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl OwnServer {
    /// Starts a server without persistence (`--save "" --appendonly no`) plus `extra` arguments.
    /// `None` (after saying so) when `redis-server` cannot be run, unless `LEASE_TEST_REQUIRE=1`.
    pub async fn start(extra: &[&str]) -> Option<Self> {
        let program = program();
        if std::process::Command::new(&program)
            .arg("--version")
            .output()
            .is_err()
        {
            let required = std::env::var("LEASE_TEST_REQUIRE").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{program} cannot be run and LEASE_TEST_REQUIRE=1"
            );
            eprintln!("SKIPPED: {program} cannot be run");
            return None;
        }
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("lease-redis-test-{}", random_suffix()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let mut server = Self {
            port,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        server.launch().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    async fn launch(&mut self) {
        let mut command = Command::new(program());
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        self.child = Some(command.spawn().expect("start redis-server"));
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server (no shutdown save) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Kills and starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch().await;
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn program() -> String {
    std::env::var("LEASE_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
