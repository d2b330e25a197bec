//! Containers mode: PostgreSQL, MySQL 8, Azurite and MinIO from testcontainers images.
//!
//! Uses `testcontainers_modules::testcontainers` (0.27), re-exported by the modules crate; testcontainers
//! 0.28 does not resolve beside it. The blocking runner keeps xtask free of an async runtime of its own.
//! A container lives as long as its handle; dropping the handle stops and removes it.

use std::any::Any;
use std::time::Duration;

use anyhow::{Context, Result};
use testcontainers_modules::azurite::{Azurite, BLOB_PORT};
use testcontainers_modules::minio::MinIO;
use testcontainers_modules::mysql::Mysql;
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::ImageExt;
use testcontainers_modules::testcontainers::runners::SyncRunner;

use crate::env;
use crate::rig::Endpoint;
use crate::services::Server;

/// Image pulls can be slow on a cold machine.
const STARTUP: Duration = Duration::from_secs(300);
/// PostgreSQL image tag (the module's default, 11, is long out of support).
const POSTGRES_TAG: &str = "16-alpine";

/// Whether containers mode has an image for this server (others run locally in containers mode).
pub(crate) fn has_image(server: Server) -> bool {
    matches!(
        server,
        Server::Postgres | Server::Mysql | Server::Azurite | Server::S3
    )
}

/// Starts the container for `server`; the returned handle keeps it alive.
pub(crate) fn start(server: Server) -> Result<(Box<dyn Any>, Endpoint)> {
    match server {
        Server::Postgres => {
            let c = Postgres::default()
                .with_host_auth()
                .with_tag(POSTGRES_TAG)
                .with_startup_timeout(STARTUP)
                .start()
                .context("postgres container")?;
            let (host, port) = (c.get_host()?, c.get_host_port_ipv4(5432)?);
            let url = format!("postgres://postgres@{host}:{port}/postgres");
            let ep = Endpoint::new(
                server,
                format!("postgres:{POSTGRES_TAG} container {host}:{port}"),
            )
            .var(env::POSTGRES_URL, url);
            Ok((Box::new(c), ep))
        }
        Server::Mysql => {
            let c = Mysql::default()
                .with_startup_timeout(STARTUP)
                .start()
                .context("mysql container")?;
            let (host, port) = (c.get_host()?, c.get_host_port_ipv4(3306)?);
            let url = format!("mysql://root@{host}:{port}/test");
            let ep = Endpoint::new(server, format!("mysql 8 container {host}:{port}"))
                .var(env::MYSQL_URL, url);
            Ok((Box::new(c), ep))
        }
        Server::Azurite => {
            let c = Azurite::default()
                .with_skip_api_version_check()
                .with_disable_telemetry()
                .with_startup_timeout(STARTUP)
                .start()
                .context("azurite container")?;
            let (host, port) = (c.get_host()?, c.get_host_port_ipv4(BLOB_PORT)?);
            let url = format!("http://{host}:{port}/{}", env::AZURITE_ACCOUNT);
            let ep = Endpoint::new(server, format!("azurite container {host}:{port}"))
                .var(env::AZURITE_BLOB_URL, url)
                .var(env::AZURITE_ACCOUNT_KEY, env::AZURITE_KEY);
            Ok((Box::new(c), ep))
        }
        Server::S3 => {
            let c = MinIO::default()
                .with_startup_timeout(STARTUP)
                .start()
                .context("minio container")?;
            let (host, port) = (c.get_host()?, c.get_host_port_ipv4(9000)?);
            let ep = Endpoint::new(server, format!("minio container {host}:{port}"))
                .var(env::S3_ENDPOINT, format!("http://{host}:{port}"))
                .var(env::S3_ACCESS_KEY_ID, "minioadmin")
                .var(env::S3_SECRET_ACCESS_KEY, "minioadmin")
                .var(env::S3_REGION, env::DEFAULT_S3_REGION);
            Ok((Box::new(c), ep))
        }
        Server::Sqlite | Server::Gcs | Server::Redis | Server::Pgbouncer => {
            anyhow::bail!("no container for {}", server.name())
        }
    }
}
