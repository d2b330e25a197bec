//! Latency of the SQL backends (see docs/backends/sql.md); placeholder until the bench lands.

fn main() {}
