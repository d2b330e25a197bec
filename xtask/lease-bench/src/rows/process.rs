//! This process's CPU time and resident memory, from `/proc` (Linux; elsewhere `None`).

use std::time::Duration;

/// CPU time of the process so far: the sum over its live threads of `/proc/self/task/*/schedstat`
/// (ns, precise), or utime + stime ticks of `/proc/self/stat` (10 ms, but counts exited threads)
/// when threads came or went between two readings.
#[derive(Debug, Clone)]
pub(crate) struct Cpu {
    threads: Vec<(u64, u64)>,
    ticks: u64,
}

impl Cpu {
    pub(crate) fn now() -> Option<Cpu> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // After the parenthesised command name: utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let mut threads = Vec::new();
        for entry in std::fs::read_dir("/proc/self/task").ok()? {
            let path = entry.ok()?.path();
            let Some(tid) = path.file_name().and_then(|n| n.to_str()?.parse().ok()) else {
                continue;
            };
            // A thread may exit between listing and reading.
            if let Ok(text) = std::fs::read_to_string(path.join("schedstat"))
                && let Some(ns) = text.split_whitespace().next().and_then(|n| n.parse().ok())
            {
                threads.push((tid, ns));
            }
        }
        threads.sort_unstable();
        Some(Cpu { threads, ticks })
    }

    /// CPU time from `self` to `later`.
    pub(crate) fn until(&self, later: &Cpu) -> Duration {
        let same = self.threads.len() == later.threads.len()
            && self
                .threads
                .iter()
                .zip(&later.threads)
                .all(|(a, b)| a.0 == b.0);
        if same {
            let ns: u64 = self
                .threads
                .iter()
                .zip(&later.threads)
                .map(|(a, b)| b.1.saturating_sub(a.1))
                .sum();
            Duration::from_nanos(ns)
        } else {
            Duration::from_millis(10 * later.ticks.saturating_sub(self.ticks))
        }
    }
}

/// CPU time of the calling thread so far (ns, `/proc/thread-self/schedstat`).
pub(crate) fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Resident set size in bytes (`VmRSS` of `/proc/self/status`).
pub(crate) fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
