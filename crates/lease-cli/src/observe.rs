//! `--metrics-addr` (Prometheus text on `/metrics`) and `--log-format` (text or JSON lines).

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

use crate::exit::{self, CliError};

/// Histogram buckets (seconds) for every histogram `lease` serves: store latencies from a
/// millisecond, acquire waits and renewal slack up to a minute.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Serves the metrics of this process on `addr` (any path answers with the Prometheus text
/// format) for as long as the runtime runs. Must be called inside the runtime.
///
/// One `lease` process holds one lease, so the lease name is a label here (its cardinality is one).
pub(crate) fn serve_metrics(addr: SocketAddr) -> Result<(), CliError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)
        .and_then(PrometheusBuilder::install)
        .map_err(|e| CliError::new(exit::CONFIG, format!("cannot serve metrics on {addr}: {e}")))?;
    lease_core::metrics::set_key_label(true);
    lease_core::metrics::describe();
    Ok(())
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event (with its span and fields), for log pipelines.
    Json,
}

/// Installs the log subscriber: `-v` levels (or `LEASE_LOG`) in the chosen format.
pub(crate) fn init_tracing(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // Without -v, `lease` speaks only through its own one-line messages.
    let default = match verbose {
        0 => "off",
        1 => "warn,sqlx=error",
        2 => "debug,sqlx=warn",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("LEASE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(verbose > 1)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
