//! The rows: one module per backend family.

pub(crate) mod azure;
pub(crate) mod memory;
pub(crate) mod objstore;
pub(crate) mod process;
pub(crate) mod scale;
pub(crate) mod sql;
pub(crate) mod wrap;

use lease_core::HolderToken;

use crate::{Options, Report};

/// Runs one row (not `memory`, which brings its own single-threaded runtime).
pub(crate) async fn run(row: &str, options: &Options, report: &mut Report) {
    match row {
        "objstore-memory" | "objstore-s3" | "objstore-azure" => {
            objstore::run(row, options, report).await
        }
        "sqlite" | "postgres" | "mysql" => sql::run(row, options, report).await,
        "azure" => azure::run(options, report).await,
        other => report
            .skipped
            .push((other.to_owned(), "no such row".to_owned())),
    }
}

/// A short random name part, so runs never meet each other's keys, tables or containers.
pub(crate) fn random() -> String {
    HolderToken::generate().to_string()[..12].to_owned()
}
