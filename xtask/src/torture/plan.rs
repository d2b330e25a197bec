//! How big and how fast one backend's row is: TTL, acquisitions, time limit, how often faults
//! come and when an owned server is restarted. Azure needs its own numbers: its shortest lease
//! is 15 s, so a row sized in TTLs like the others would take many minutes.

use std::time::Duration;

use super::TortureArgs;

/// Azure's shortest lease duration (the service refuses anything between 1 and 14 s).
const AZURE_MIN_TTL: Duration = Duration::from_secs(15);

/// One row's numbers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowPlan {
    /// Lease TTL.
    pub(crate) ttl: Duration,
    /// Acquisitions to reach (by all workers of the row).
    pub(crate) acquisitions: u64,
    /// Whatever was reached by then is checked and reported.
    pub(crate) time_limit: Duration,
    /// Time between two faults of the rotation.
    pub(crate) fault_period: Duration,
    /// When an owned server is first restarted (from the start of the row).
    pub(crate) first_restart: Duration,
    /// The gap after the first restart; see [`RowPlan::restart_gap`].
    pub(crate) restart_every: Duration,
    /// Whether each gap is twice the one before (a store that loses its data on restart).
    pub(crate) restart_gap_doubles: bool,
}

impl RowPlan {
    pub(crate) fn new(backend: &str, args: &TortureArgs) -> Self {
        let asked = args.ttl_ms.map(Duration::from_millis);
        let ttl = match backend {
            "azure" => asked.unwrap_or(AZURE_MIN_TTL).max(AZURE_MIN_TTL),
            _ => asked.unwrap_or(Duration::from_secs(2)),
        };
        // --quick: sized so that each row runs about a minute on two cores (PostgreSQL flushes
        // every lease statement and reconnects its listener after each cut; moto is one Python
        // process; Azurite spends three requests per acquisition). The object-store rows are
        // capped shorter than the SQL ones: `cargo xtask test` runs them all.
        let quick_size = match backend {
            "memory" => 4_000,
            "sqlite" => 3_000,
            "redis" => 3_000,
            "mysql" => 2_000,
            "objstore-s3" => 1_200,
            "azure" => 1_000,
            _ => 1_500,
        };
        let acquisitions =
            args.acquisitions
                .unwrap_or(if args.quick { quick_size } else { 100_000 });
        let time_limit = if let Some(secs) = args.time_limit_s {
            Duration::from_secs(secs)
        } else if args.quick {
            // CI's budget: whatever count was reached by then is reported.
            Duration::from_secs(match backend {
                "azure" => 70,
                "objstore-s3" => 60,
                _ => 75,
            })
        } else {
            // Generous: tens to hundreds of acquisitions a second is typical (Azure: 10-15, its
            // 15 s leases keep a key blocked long after each fault); the limit stops a hang.
            let per_second = if backend == "azure" { 8 } else { 20 };
            Duration::from_secs(120 + acquisitions / per_second)
        };
        let fault_period = match backend {
            // A fault every 2 TTLs would be one every 30 s: a quick row would see three.
            "azure" => ttl / 3,
            // A quick SQL row lasts 20-30 s here: a fault every TTL/2 gives it a few dozen.
            _ if args.quick => ttl / 2,
            _ => ttl,
        };
        // moto comes back empty: its tokens start again at 1 and the fence refuses them until
        // they climb past the highest token it saw. Tokens climb at about the rate they did
        // before, so a gap twice the one before leaves the second half of each gap with the
        // fence admitting (and checking) the new store's grants again; with equal gaps they seldom
        // get there in time (docs/safety.md, seed 44).
        let loses_data = backend == "objstore-s3";
        let (first_restart, restart_every) = match (args.quick, loses_data) {
            // Early enough that the tokens climb past the fence before a quick row ends.
            (true, true) => (Duration::from_secs(12), Duration::from_secs(120)),
            // Once, mid-row, with time left to see the store work again afterwards.
            (true, false) => (Duration::from_secs(30), Duration::from_secs(120)),
            (false, _) => (Duration::from_secs(60), Duration::from_secs(120)),
        };
        Self {
            ttl,
            acquisitions,
            time_limit,
            fault_period,
            first_restart,
            restart_every,
            restart_gap_doubles: loses_data,
        }
    }

    /// Time from restart number `done` (1 for the first) to the next one.
    pub(crate) fn restart_gap(&self, done: u32) -> Duration {
        if self.restart_gap_doubles {
            self.restart_every
                .saturating_mul(1 << done.saturating_sub(1).min(16))
        } else {
            self.restart_every
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(quick: bool, ttl_ms: Option<u64>) -> TortureArgs {
        TortureArgs {
            backend: Vec::new(),
            acquisitions: None,
            quick,
            seed: 1,
            keys: 8,
            semaphore: None,
            processes: 2,
            contenders: 16,
            ttl_ms,
            time_limit_s: None,
        }
    }

    #[test]
    fn azure_never_goes_below_its_fifteen_second_minimum() {
        assert_eq!(RowPlan::new("azure", &args(true, None)).ttl, AZURE_MIN_TTL);
        assert_eq!(
            RowPlan::new("azure", &args(false, Some(2000))).ttl,
            AZURE_MIN_TTL
        );
        assert_eq!(
            RowPlan::new("azure", &args(false, Some(30_000))).ttl,
            Duration::from_secs(30)
        );
        assert_eq!(
            RowPlan::new("postgres", &args(false, Some(2000))).ttl,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn a_store_that_loses_its_data_gets_doubling_gaps_between_restarts() {
        let s3 = RowPlan::new("objstore-s3", &args(false, None));
        let gaps: Vec<u64> = (1..=4).map(|n| s3.restart_gap(n).as_secs()).collect();
        assert_eq!(gaps, [120, 240, 480, 960]);
        // Every gap is at least the time since the restart before it: the tokens climb past
        // the fence before the next loss.
        assert!(s3.first_restart <= s3.restart_gap(1));
        let azure = RowPlan::new("azure", &args(false, None));
        assert_eq!(azure.restart_gap(1), azure.restart_gap(4));
    }

    #[test]
    fn quick_rows_restart_their_server_before_their_time_limit() {
        for backend in super::super::BACKENDS {
            let plan = RowPlan::new(backend, &args(true, None));
            assert!(
                plan.first_restart <= plan.time_limit / 2,
                "{backend}: {plan:?}"
            );
            // Several faults per row even with Azure's long TTL.
            assert!(
                plan.time_limit >= plan.fault_period * 10,
                "{backend}: {plan:?}"
            );
        }
    }
}
