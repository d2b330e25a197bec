//! What workers record, and the checker that reads it back.
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds: one clock for every process on the machine, so
//! intervals recorded by different workers compare directly.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Now on `CLOCK_MONOTONIC`, in nanoseconds.
pub(crate) fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A `tokio::time::Instant` (the lease's deadline) on the same scale as [`mono_ns`].
pub(crate) fn instant_ns(at: tokio::time::Instant) -> u64 {
    let now = tokio::time::Instant::now();
    let now_ns = mono_ns();
    if at >= now {
        now_ns + (at - now).as_nanos() as u64
    } else {
        now_ns.saturating_sub((now - at).as_nanos() as u64)
    }
}

/// One line of a worker's journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// A grant: written as soon as `acquire` returned.
    Grant {
        key: String,
        token: u64,
        pid: u32,
        /// When the holder learnt it holds.
        at: u64,
        /// Its local deadline then.
        deadline: u64,
    },
    /// The end of a critical section: the holder stopped believing at `end`
    /// (release started, or the deadline passed, whichever came first).
    End {
        key: String,
        token: u64,
        pid: u32,
        end: u64,
        /// The lease was lost (deadline passed, or the store said it is not held).
        lost: bool,
        /// When `Lease::lost()` resolved, if it did.
        signalled: Option<u64>,
    },
    /// The holder's deadline moved (a renewal), noted while it holds: a worker killed while
    /// holding believed until its last known deadline at the latest.
    Deadline {
        key: String,
        token: u64,
        pid: u32,
        deadline: u64,
    },
    /// Totals a worker writes when it finishes.
    Totals { pid: u32, acquire_errors: u64 },
}

/// Appends entries, one JSON object per line, flushed each time (a killed worker loses nothing
/// it wrote).
pub(crate) struct JournalWriter {
    out: BufWriter<File>,
}

impl JournalWriter {
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            out: BufWriter::new(file),
        })
    }

    pub(crate) fn write(&mut self, entry: &Entry) {
        // A full disk must not take the worker down mid-lease; the checker notices the gap.
        let _ = serde_json::to_writer(&mut self.out, entry);
        let _ = self.out.write_all(b"\n");
        let _ = self.out.flush();
    }
}

pub(crate) fn read_journal(path: &Path, into: &mut Vec<Entry>) -> Result<()> {
    let file = match File::open(path) {
        Ok(file) => file,
        // A worker killed while it was still connecting never opened its journal: it held
        // nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    for line in BufReader::new(file).lines() {
        let line = line?;
        // The last line of a killed worker may be cut short.
        if let Ok(entry) = serde_json::from_str(&line) {
            into.push(entry);
        }
    }
    Ok(())
}

/// One fenced write as the write log recorded it.
#[derive(Debug, Clone)]
pub(crate) struct WriteRow {
    pub(crate) key: String,
    /// The object's chain on a fenced store (a new one after the store lost the object); empty
    /// for the fence table.
    pub(crate) chain: String,
    /// The order the resource applied the writes of one (key, chain) in: the write log's serial
    /// for the fence table (the fence row is locked from `admit` to the commit), the position in
    /// the object's chain for a fenced store (each put was conditional on the version before).
    pub(crate) order: u64,
    pub(crate) token: u64,
    /// Fenced store: the token the fence had recorded on the version this write replaced.
    pub(crate) prev_token: Option<u64>,
    pub(crate) admitted: bool,
    /// The grant's identity (process and its grant count), independent of the token.
    pub(crate) pid: u32,
    pub(crate) grant: u64,
    /// When the worker sent it (monotonic, as the journals).
    pub(crate) sent_at: u64,
}

/// A fenced store's object as read at the end of the row.
#[derive(Debug, Clone)]
pub(crate) struct FinalObject {
    pub(crate) key: String,
    pub(crate) chain: String,
    pub(crate) position: u64,
    /// The token in the object's body (its writer's).
    pub(crate) token: u64,
    /// The token the fenced store recorded in the object's metadata.
    pub(crate) recorded_token: Option<u64>,
}

/// Everything the checker needs besides the journals.
#[derive(Debug, Default)]
pub(crate) struct RunFacts {
    /// `--semaphore N`: at most N holders at once across all keys.
    pub(crate) permits: Option<u32>,
    /// The write log (any order: the checker orders each resource's writes by [`WriteRow::order`]).
    pub(crate) writes: Vec<WriteRow>,
    /// Fenced store rows: the fenced objects at the end.
    pub(crate) final_objects: Vec<FinalObject>,
    /// Per worker pid: when it was killed.
    pub(crate) killed_at: HashMap<u32, u64>,
    /// Per worker pid: (stopped, resumed) intervals.
    pub(crate) paused: HashMap<u32, Vec<(u64, u64)>>,
    pub(crate) faults_injected: u64,
    /// Restarts of the store's server (by the run, which owns it).
    pub(crate) server_restarts: u64,
    /// Restarts after which the store came back without its data (moto: in memory), as
    /// (stopped, answering again): every lock object and fencing counter was lost then.
    pub(crate) data_losses: Vec<(u64, u64)>,
    /// Restarts after which the store had kept its counters but forgotten its active leases
    /// (Azurite), as (stopped, answering again).
    pub(crate) lease_losses: Vec<(u64, u64)>,
    /// The lease TTL: a holder that believes at `t` had its grant sent after `t − TTL`.
    pub(crate) ttl_ns: u64,
}

impl RunFacts {
    /// Whether the store's data loss explains why `later` (granted after `earlier`) carries a
    /// token no greater than `earlier`'s: some loss happened after `earlier` may have been granted
    /// by the old store (it was seen before the server answered again, or within a TTL of that:
    /// a grant still believed then was sent before) and before `later` was seen. Tokens minted
    /// by one store only rise, so a later grant with a greater token is never excused.
    fn lost_between(&self, earlier_start: u64, earlier_token: u64, later: &Interval) -> bool {
        let between = |&(down, up): &(u64, u64)| {
            earlier_start < up.saturating_add(self.ttl_ns) && later.start >= down
        };
        later.token <= earlier_token && self.data_losses.iter().any(between)
    }

    /// Whether a store that forgot its leases (but kept its counters) explains why `later` was
    /// granted while `earlier` still believed, with the same window as [`Self::lost_between`].
    /// Tokens still rise across such a loss, so this never excuses a fencing regression.
    fn leases_lost_between(&self, earlier_start: u64, later: &Interval) -> bool {
        self.lease_losses.iter().any(|&(down, up)| {
            earlier_start < up.saturating_add(self.ttl_ns) && later.start >= down
        })
    }
}

/// The checker's counts. The `violations` are the safety properties; each must be 0.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) acquisitions: u64,
    pub(crate) faults_injected: u64,
    pub(crate) acquire_errors: u64,
    pub(crate) leases_lost: u64,
    pub(crate) losses_signalled: u64,
    pub(crate) fenced_writes_admitted: u64,
    pub(crate) stale_writes_refused: u64,
    pub(crate) server_restarts: u64,
    pub(crate) store_data_losses: u64,
    /// Data losses after which (before the next one) the fence admitted a write again: the
    /// restarted store's tokens climbed past the fence, so its grants were checked there too.
    pub(crate) fence_admitting_after_data_loss: u64,
    pub(crate) store_lease_losses: u64,
    /// Overlaps, token regressions and late loss signals between a grant of the store before it
    /// lost its data and one after: the store's doing (its counter started again), reported
    /// apart and not counted as violations.
    pub(crate) across_data_loss: u64,
    // Violations.
    pub(crate) overlapping_holders: u64,
    /// Per resource in the order it applied them: admitted writes with a token lower than one
    /// admitted before, or (fenced store) than the one on the version they replaced, or two
    /// admitted writes in one place of an object's chain.
    pub(crate) stale_writes_admitted: u64,
    /// Per resource: admitted writes of a grant other than the first one admitted with that
    /// token (two grants shared a token, and the fence let both in).
    pub(crate) second_grants_admitted_under_a_token: u64,
    /// Fenced store: objects at the end whose token is below one logged as landed on their chain,
    /// whose place is before a logged one, or whose recorded token is not their writer's.
    pub(crate) fenced_objects_behind_the_log: u64,
    pub(crate) fencing_regressions: u64,
    pub(crate) losses_signalled_after_next_grant: u64,
    /// `--semaphore N`: grants that began while N others on the semaphore's slots believed.
    pub(crate) holders_beyond_permits: u64,
}

impl Counts {
    pub(crate) fn violations(&self) -> u64 {
        self.overlapping_holders
            + self.stale_writes_admitted
            + self.second_grants_admitted_under_a_token
            + self.fenced_objects_behind_the_log
            + self.fencing_regressions
            + self.losses_signalled_after_next_grant
            + self.holders_beyond_permits
    }

    pub(crate) fn add(&mut self, other: &Counts) {
        self.acquisitions += other.acquisitions;
        self.faults_injected += other.faults_injected;
        self.acquire_errors += other.acquire_errors;
        self.leases_lost += other.leases_lost;
        self.losses_signalled += other.losses_signalled;
        self.fenced_writes_admitted += other.fenced_writes_admitted;
        self.stale_writes_refused += other.stale_writes_refused;
        self.server_restarts += other.server_restarts;
        self.store_data_losses += other.store_data_losses;
        self.fence_admitting_after_data_loss += other.fence_admitting_after_data_loss;
        self.store_lease_losses += other.store_lease_losses;
        self.across_data_loss += other.across_data_loss;
        self.overlapping_holders += other.overlapping_holders;
        self.stale_writes_admitted += other.stale_writes_admitted;
        self.second_grants_admitted_under_a_token += other.second_grants_admitted_under_a_token;
        self.fenced_objects_behind_the_log += other.fenced_objects_behind_the_log;
        self.fencing_regressions += other.fencing_regressions;
        self.losses_signalled_after_next_grant += other.losses_signalled_after_next_grant;
        self.holders_beyond_permits += other.holders_beyond_permits;
    }

    /// (label, value, is a violation) rows for printing.
    pub(crate) fn rows(&self) -> Vec<(&'static str, u64, bool)> {
        vec![
            ("acquisitions", self.acquisitions, false),
            ("faults injected", self.faults_injected, false),
            ("acquire errors (retried)", self.acquire_errors, false),
            ("leases lost", self.leases_lost, false),
            ("losses signalled", self.losses_signalled, false),
            ("fenced writes admitted", self.fenced_writes_admitted, false),
            (
                "stale writes refused by the fence",
                self.stale_writes_refused,
                false,
            ),
            ("server restarts", self.server_restarts, false),
            (
                "store lost data: fencing reset after restart",
                self.store_data_losses,
                false,
            ),
            (
                "data losses after which the fence admitted writes again",
                self.fence_admitting_after_data_loss,
                false,
            ),
            (
                "store forgot its leases after restart (counters kept)",
                self.store_lease_losses,
                false,
            ),
            (
                "overlaps/regressions across the data loss (store's, not counted)",
                self.across_data_loss,
                false,
            ),
            (
                "overlapping holders by local deadline",
                self.overlapping_holders,
                true,
            ),
            (
                "stale writes admitted by the fence",
                self.stale_writes_admitted,
                true,
            ),
            (
                "writes of a second grant admitted under one token",
                self.second_grants_admitted_under_a_token,
                true,
            ),
            (
                "fenced objects at the end behind the write log",
                self.fenced_objects_behind_the_log,
                true,
            ),
            ("fencing regressions", self.fencing_regressions, true),
            (
                "losses signalled after the next grant",
                self.losses_signalled_after_next_grant,
                true,
            ),
            (
                "semaphore: moments with more than N holders",
                self.holders_beyond_permits,
                true,
            ),
        ]
    }
}

/// A grant with its end filled in.
#[derive(Debug, Clone)]
struct Interval {
    token: u64,
    pid: u32,
    start: u64,
    end: u64,
    lost: bool,
    signalled: Option<u64>,
    deadline_at_grant: u64,
}

/// Checks the journals and the resource's write log.
pub(crate) fn check(entries: &[Entry], facts: &RunFacts) -> Counts {
    let mut counts = Counts {
        faults_injected: facts.faults_injected,
        server_restarts: facts.server_restarts,
        store_data_losses: facts.data_losses.len() as u64,
        store_lease_losses: facts.lease_losses.len() as u64,
        ..Counts::default()
    };
    let mut grants: HashMap<(String, u64, u32), Interval> = HashMap::new();
    for entry in entries {
        match entry {
            Entry::Grant {
                key,
                token,
                pid,
                at,
                deadline,
            } => {
                counts.acquisitions += 1;
                grants.insert(
                    (key.clone(), *token, *pid),
                    Interval {
                        token: *token,
                        pid: *pid,
                        start: *at,
                        // Unfinished (killed) until an End says otherwise.
                        end: u64::MAX,
                        lost: false,
                        signalled: None,
                        deadline_at_grant: *deadline,
                    },
                );
            }
            Entry::End {
                key,
                token,
                pid,
                end,
                lost,
                signalled,
            } => {
                if let Some(g) = grants.get_mut(&(key.clone(), *token, *pid)) {
                    g.end = *end;
                    g.lost = *lost;
                    g.signalled = *signalled;
                }
            }
            Entry::Deadline {
                key,
                token,
                pid,
                deadline,
            } => {
                if let Some(g) = grants.get_mut(&(key.clone(), *token, *pid)) {
                    g.deadline_at_grant = g.deadline_at_grant.max(*deadline);
                }
            }
            Entry::Totals { acquire_errors, .. } => counts.acquire_errors += acquire_errors,
        }
    }
    let mut by_key: BTreeMap<String, Vec<Interval>> = BTreeMap::new();
    for ((key, _, _), mut g) in grants {
        if g.end == u64::MAX {
            // The worker died holding it: it believed until it was killed or until its last
            // known deadline, whichever came first.
            let killed = facts.killed_at.get(&g.pid).copied().unwrap_or(u64::MAX);
            g.end = killed.min(g.deadline_at_grant);
            if g.end < g.start {
                g.end = g.start;
            }
        }
        by_key.entry(key).or_default().push(g);
    }
    if let Some(permits) = facts.permits {
        counts.holders_beyond_permits = beyond_permits(&by_key, facts, permits);
    }
    for intervals in by_key.values_mut() {
        intervals.sort_by_key(|g| (g.start, g.token));
        // The grant believed longest so far: (end, pid, start, token).
        let mut latest_end: Option<(u64, u32, u64, u64)> = None;
        // The last grant whose holder believed at some point (a holder frozen between the
        // answer and noting it saw its deadline pass first: it never believed, and its start
        // says nothing about when the store granted it).
        let mut last_believed: Option<(u64, u64)> = None;
        for (i, g) in intervals.iter().enumerate() {
            if g.lost {
                counts.leases_lost += 1;
                if g.signalled.is_some() {
                    counts.losses_signalled += 1;
                }
            }
            if let Some((end, pid, start, token)) = latest_end
                && g.start < end
                && g.end > g.start
            {
                if facts.lost_between(start, token, g) || facts.leases_lost_between(start, g) {
                    counts.across_data_loss += 1;
                } else {
                    counts.overlapping_holders += 1;
                    eprintln!(
                        "torture: OVERLAP: token {} (pid {}) held from {} while an earlier grant \
                         (pid {pid}) believed until {end}",
                        g.token, g.pid, g.start
                    );
                }
            }
            if g.end > g.start && latest_end.is_none_or(|(end, ..)| g.end > end) {
                latest_end = Some((g.end, g.pid, g.start, g.token));
            }
            if g.end > g.start {
                if let Some((before, start)) = last_believed
                    && g.token <= before
                {
                    if facts.lost_between(start, before, g) {
                        counts.across_data_loss += 1;
                    } else {
                        counts.fencing_regressions += 1;
                        eprintln!(
                            "torture: FENCING REGRESSION: token {} held after token {before}",
                            g.token
                        );
                    }
                }
                last_believed = Some((g.token, g.start));
            }
            // A lost lease must have been signalled before the key was granted again, unless
            // its process was frozen (SIGSTOP) or killed then: nothing runs in such a process.
            if let (true, Some(next)) = (g.lost, intervals.get(i + 1)) {
                let frozen = facts.paused.get(&g.pid).is_some_and(|spans| {
                    spans
                        .iter()
                        .any(|&(from, to)| from <= next.start && to >= g.end.min(next.start))
                }) || facts.killed_at.contains_key(&g.pid);
                match g.signalled {
                    Some(at)
                        if at > next.start
                            && (facts.lost_between(g.start, g.token, next)
                                || facts.leases_lost_between(g.start, next)) =>
                    {
                        counts.across_data_loss += 1;
                    }
                    Some(at) if at > next.start && !frozen => {
                        counts.losses_signalled_after_next_grant += 1;
                        eprintln!(
                            "torture: LATE LOSS SIGNAL: token {} (pid {}) signalled {} ms after \
                             token {} was granted",
                            g.token,
                            g.pid,
                            (at - next.start) / 1_000_000,
                            next.token
                        );
                    }
                    _ => {}
                }
            }
        }
    }
    check_writes(facts, &mut counts);
    let mut losses = facts.data_losses.clone();
    losses.sort_unstable();
    counts.fence_admitting_after_data_loss = losses
        .iter()
        .enumerate()
        .filter(|&(i, &(_, up))| {
            let next_down = losses.get(i + 1).map_or(u64::MAX, |&(down, _)| down);
            facts
                .writes
                .iter()
                .any(|w| w.admitted && w.sent_at > up && w.sent_at < next_down)
        })
        .count() as u64;
    counts
}

/// The write log's counts: per resource (key, and chain on a fenced store) in the order the
/// resource applied the writes, tokens admitted never go down, and a token is admitted for one
/// grant only; and the fenced objects at the end agree with what the log says landed.
fn check_writes(facts: &RunFacts, counts: &mut Counts) {
    let mut by_resource: BTreeMap<(&str, &str), Vec<&WriteRow>> = BTreeMap::new();
    for w in &facts.writes {
        if w.admitted {
            counts.fenced_writes_admitted += 1;
            by_resource
                .entry((w.key.as_str(), w.chain.as_str()))
                .or_default()
                .push(w);
        } else {
            counts.stale_writes_refused += 1;
        }
    }
    for ((key, _), writes) in &mut by_resource {
        writes.sort_by_key(|w| w.order);
        // The highest token admitted so far and the grant it was first admitted for.
        let mut top: Option<(u64, u32, u64)> = None;
        let mut last_order = None;
        for w in writes.iter() {
            let landed_on_newer = w.prev_token.is_some_and(|prev| prev > w.token);
            let below_top = top.is_some_and(|(token, ..)| w.token < token);
            let one_place = last_order == Some(w.order) && !w.chain.is_empty();
            if landed_on_newer || below_top || one_place {
                counts.stale_writes_admitted += 1;
                eprintln!(
                    "torture: STALE WRITE ADMITTED on {key}: token {} (pid {}) at {} after token                      {:?} (replaced version's token {:?})",
                    w.token,
                    w.pid,
                    w.order,
                    top.map(|t| t.0),
                    w.prev_token
                );
            } else if let Some((token, pid, grant)) = top
                && token == w.token
                && (pid, grant) != (w.pid, w.grant)
            {
                counts.second_grants_admitted_under_a_token += 1;
                eprintln!(
                    "torture: TOKEN {token} ADMITTED FOR TWO GRANTS on {key}: pid {pid} grant                      {grant}, then pid {} grant {}",
                    w.pid, w.grant
                );
            }
            if top.is_none_or(|(token, ..)| w.token > token) {
                top = Some((w.token, w.pid, w.grant));
            }
            last_order = Some(w.order);
        }
    }
    for object in &facts.final_objects {
        let logged = by_resource
            .get(&(object.key.as_str(), object.chain.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let highest_token = logged.iter().map(|w| w.token).max().unwrap_or(0);
        let last_place = logged.iter().map(|w| w.order).max().unwrap_or(0);
        if object.recorded_token != Some(object.token)
            || object.token < highest_token
            || object.position < last_place
        {
            counts.fenced_objects_behind_the_log += 1;
            eprintln!(
                "torture: FENCED OBJECT BEHIND THE LOG: {} holds token {} (recorded {:?}) at {}                  of its chain; the log has token {highest_token} and place {last_place}",
                object.key, object.token, object.recorded_token, object.position
            );
        }
    }
}

/// Grants (across every key) that began while `permits` or more others believed they held, leaving
/// out those the store's own data loss explains.
fn beyond_permits(by_key: &BTreeMap<String, Vec<Interval>>, facts: &RunFacts, permits: u32) -> u64 {
    // (instant, 0 = an end, 1 = a start): at equal instants an end comes first.
    let mut events: Vec<(u64, u8, &Interval)> = Vec::new();
    for g in by_key.values().flatten().filter(|g| g.end > g.start) {
        events.push((g.start, 1, g));
        events.push((g.end, 0, g));
    }
    events.sort_by_key(|e| (e.0, e.1));
    let mut believing: Vec<&Interval> = Vec::new();
    let mut beyond = 0;
    for (_, kind, g) in events {
        if kind == 0 {
            if let Some(i) = believing.iter().position(|b| std::ptr::eq(*b, g)) {
                believing.swap_remove(i);
            }
            continue;
        }
        let store_lost_data = |b: &&Interval| {
            facts.leases_lost_between(b.start, g)
                || facts
                    .data_losses
                    .iter()
                    .any(|&(down, up)| b.start < up.saturating_add(facts.ttl_ns) && g.start >= down)
        };
        if believing.len() >= permits as usize && !believing.iter().any(store_lost_data) {
            beyond += 1;
            eprintln!(
                "torture: MORE THAN {permits} HOLDERS: token {} (pid {}) granted at {} while {} held",
                g.token,
                g.pid,
                g.start,
                believing.len()
            );
        }
        believing.push(g);
    }
    beyond
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(key: &str, token: u64, pid: u32, at: u64) -> Entry {
        Entry::Grant {
            key: key.into(),
            token,
            pid,
            at,
            deadline: at + 100,
        }
    }

    fn end(key: &str, token: u64, pid: u32, end: u64) -> Entry {
        Entry::End {
            key: key.into(),
            token,
            pid,
            end,
            lost: false,
            signalled: None,
        }
    }

    #[test]
    fn a_worker_killed_before_it_opened_its_journal_held_nothing() {
        let mut entries = Vec::new();
        let missing = std::env::temp_dir().join(format!("no-journal-{}.jsonl", std::process::id()));
        read_journal(&missing, &mut entries).unwrap();
        assert!(entries.is_empty());
    }

    #[test]
    fn more_holders_than_permits_across_slots_are_counted() {
        // Slots 0..3 held at once, then a fourth slot while three still believe.
        let entries = vec![
            grant("s/permit-0", 1, 1, 0),
            grant("s/permit-1", 1, 2, 10),
            grant("s/permit-2", 1, 3, 20),
            end("s/permit-0", 1, 1, 30),
            // Slot 0's holder ended at 30: a new holder then is the third, not the fourth.
            grant("s/permit-0", 2, 4, 30),
            grant("s/permit-3", 1, 5, 40),
            end("s/permit-1", 1, 2, 60),
            end("s/permit-2", 1, 3, 60),
            end("s/permit-0", 2, 4, 60),
            end("s/permit-3", 1, 5, 60),
        ];
        let mut facts = RunFacts {
            permits: Some(3),
            ..RunFacts::default()
        };
        let c = check(&entries, &facts);
        assert_eq!((c.holders_beyond_permits, c.overlapping_holders), (1, 0));
        assert_eq!(c.violations(), 1);
        facts.permits = Some(4);
        assert_eq!(check(&entries, &facts).holders_beyond_permits, 0);
        facts.permits = None;
        assert_eq!(check(&entries, &facts).violations(), 0);
    }

    #[test]
    fn sequential_holders_are_clean() {
        let entries = vec![
            grant("k", 1, 1, 0),
            end("k", 1, 1, 50),
            grant("k", 2, 2, 60),
            end("k", 2, 2, 70),
            grant("j", 1, 1, 10),
        ];
        let c = check(&entries, &RunFacts::default());
        assert_eq!(c.acquisitions, 3);
        assert_eq!(c.violations(), 0);
    }

    #[test]
    fn overlapping_holders_are_counted() {
        let entries = vec![
            grant("k", 1, 1, 0),
            end("k", 1, 1, 50),
            grant("k", 2, 2, 40),
        ];
        assert_eq!(check(&entries, &RunFacts::default()).overlapping_holders, 1);
    }

    #[test]
    fn a_killed_holder_believes_until_it_was_killed() {
        let entries = vec![grant("k", 1, 1, 0), grant("k", 2, 2, 90)];
        let mut facts = RunFacts::default();
        assert_eq!(
            check(&entries, &facts).overlapping_holders,
            1,
            "deadline 100 > 90"
        );
        facts.killed_at.insert(1, 80);
        assert_eq!(check(&entries, &facts).overlapping_holders, 0);
    }

    #[test]
    fn a_killed_holder_believes_no_longer_than_its_last_known_deadline() {
        let entries = vec![
            grant("k", 1, 1, 0),
            Entry::Deadline {
                key: "k".into(),
                token: 1,
                pid: 1,
                deadline: 150,
            },
            grant("k", 2, 2, 160),
        ];
        let mut facts = RunFacts::default();
        facts.killed_at.insert(1, 500);
        assert_eq!(check(&entries, &facts).overlapping_holders, 0);
        facts.killed_at.insert(1, 170);
        let mut late = entries.clone();
        late.push(Entry::Deadline {
            key: "k".into(),
            token: 1,
            pid: 1,
            deadline: 400,
        });
        assert_eq!(check(&late, &facts).overlapping_holders, 1);
    }

    #[test]
    fn a_grant_never_believed_does_not_order_tokens() {
        // Token 5 was seen only after its deadline (its holder was frozen): no regression.
        let entries = vec![
            grant("k", 6, 2, 10),
            end("k", 6, 2, 20),
            Entry::Grant {
                key: "k".into(),
                token: 5,
                pid: 1,
                at: 30,
                deadline: 5,
            },
            end("k", 5, 1, 5),
        ];
        let c = check(&entries, &RunFacts::default());
        assert_eq!(c.fencing_regressions, 0);
        assert_eq!(c.overlapping_holders, 0);
    }

    #[test]
    fn fencing_regressions_are_counted() {
        let entries = vec![
            grant("k", 5, 1, 0),
            end("k", 5, 1, 10),
            grant("k", 4, 2, 20),
        ];
        assert_eq!(check(&entries, &RunFacts::default()).fencing_regressions, 1);
    }

    /// A write to the fence table, logged `sent_at`-th: one grant per token (pid 1, grant = token).
    fn write(token: u64, admitted: bool, sent_at: u64) -> WriteRow {
        WriteRow {
            key: "k".into(),
            chain: String::new(),
            order: sent_at,
            token,
            prev_token: None,
            admitted,
            pid: 1,
            grant: token,
            sent_at,
        }
    }

    /// A write that landed at `position` of chain `c` of a fenced object over a version recorded
    /// with `prev`.
    fn landed(position: u64, token: u64, prev: Option<u64>) -> WriteRow {
        WriteRow {
            chain: "c".into(),
            prev_token: prev,
            ..write(token, true, position)
        }
    }

    #[test]
    fn stale_writes_admitted_are_counted() {
        // In the log's order: 2 admitted, 1 refused, then 1 admitted after 2.
        let facts = RunFacts {
            writes: vec![write(2, true, 1), write(1, false, 2), write(1, true, 3)],
            ..RunFacts::default()
        };
        let c = check(&[], &facts);
        assert_eq!(c.stale_writes_refused, 1);
        assert_eq!(c.fenced_writes_admitted, 2);
        assert_eq!(c.stale_writes_admitted, 1);
        assert_eq!(c.violations(), 1);
    }

    #[test]
    fn writes_are_ordered_by_the_resource_not_by_the_log() {
        // Logged out of order (a store write is logged after its put): the chain's positions
        // decide, and in them the tokens rise.
        let clean = RunFacts {
            writes: vec![
                landed(2, 5, Some(4)),
                landed(1, 4, None),
                landed(3, 5, Some(5)),
            ],
            ..RunFacts::default()
        };
        assert_eq!(check(&[], &clean).violations(), 0);
        // The same tokens landed the other way round.
        let stale = RunFacts {
            writes: vec![landed(1, 5, None), landed(2, 4, Some(5))],
            ..RunFacts::default()
        };
        assert_eq!(check(&[], &stale).stale_writes_admitted, 1);
        // Chains are apart: a store that lost the object starts again, below the old chain.
        let mut again = landed(1, 3, None);
        again.chain = "d".into();
        let facts = RunFacts {
            writes: vec![landed(1, 5, None), again],
            ..RunFacts::default()
        };
        assert_eq!(check(&[], &facts).violations(), 0);
    }

    #[test]
    fn a_write_over_a_newer_recorded_token_is_stale_even_when_the_newer_was_not_logged() {
        // Position 2 (token 9) landed but its log row was lost (worker killed); position 3 with
        // token 7 replaced it.
        let facts = RunFacts {
            writes: vec![landed(1, 6, None), landed(3, 7, Some(9))],
            ..RunFacts::default()
        };
        assert_eq!(check(&[], &facts).stale_writes_admitted, 1);
    }

    #[test]
    fn two_writes_landing_on_one_version_are_counted() {
        let facts = RunFacts {
            writes: vec![
                landed(1, 4, None),
                landed(2, 5, Some(4)),
                landed(2, 6, Some(4)),
            ],
            ..RunFacts::default()
        };
        assert_eq!(check(&[], &facts).stale_writes_admitted, 1);
    }

    #[test]
    fn a_token_admitted_for_a_second_grant_is_counted() {
        // `admit` takes an equal token (the same holder writing again): the checker tells one
        // grant writing twice from two grants sharing a token.
        let same_grant = RunFacts {
            writes: vec![write(4, true, 1), write(4, true, 2)],
            ..RunFacts::default()
        };
        assert_eq!(check(&[], &same_grant).violations(), 0);
        let mut other = write(4, true, 2);
        other.pid = 2;
        let two_grants = RunFacts {
            writes: vec![write(4, true, 1), other],
            ..RunFacts::default()
        };
        let c = check(&[], &two_grants);
        assert_eq!(c.second_grants_admitted_under_a_token, 1);
        assert_eq!(c.violations(), 1);
    }

    #[test]
    fn a_fenced_object_behind_its_log_is_counted() {
        let writes = vec![landed(1, 4, None), landed(2, 5, Some(4))];
        let object = |position, token, recorded| FinalObject {
            key: "k".into(),
            chain: "c".into(),
            position,
            token,
            recorded_token: Some(recorded),
        };
        let check_with = |o: FinalObject| {
            check(
                &[],
                &RunFacts {
                    writes: writes.clone(),
                    final_objects: vec![o],
                    ..RunFacts::default()
                },
            )
            .fenced_objects_behind_the_log
        };
        assert_eq!(check_with(object(2, 5, 5)), 0);
        // A later write that was not logged: fine while its token did not go down.
        assert_eq!(check_with(object(3, 6, 6)), 0);
        // An unlogged stale write landed last.
        assert_eq!(check_with(object(3, 4, 4)), 1);
        // The chain went back.
        assert_eq!(check_with(object(1, 5, 5)), 1);
        // The fence recorded another token than the writer's.
        assert_eq!(check_with(object(2, 5, 3)), 1);
    }

    #[test]
    fn the_fence_admitting_again_after_a_data_loss_is_counted_once_per_loss() {
        // Losses at 100-110 and 200-210: writes admitted after the first (sent at 150), none
        // after the second (refused: its tokens never climbed past the fence).
        let facts = RunFacts {
            writes: vec![
                write(40, true, 50),
                write(3, false, 120),
                write(41, true, 150),
                write(42, true, 160),
                write(5, false, 220),
            ],
            data_losses: vec![(200, 210), (100, 110)],
            ..RunFacts::default()
        };
        let c = check(&[], &facts);
        assert_eq!(c.fence_admitting_after_data_loss, 1);
        assert_eq!(c.violations(), 0);
    }

    #[test]
    fn a_store_that_lost_its_data_is_reported_apart_never_as_a_violation_or_silently() {
        // Token 57 granted before the store restarted empty; token 1 granted by the new store
        // while 57's holder still believed (its renewal found nothing): overlap + regression.
        let entries = vec![
            grant("k", 57, 1, 0),
            end("k", 57, 1, 100),
            grant("k", 1, 2, 60),
            end("k", 1, 2, 70),
            grant("k", 2, 2, 80),
            end("k", 2, 2, 90),
        ];
        let mut facts = RunFacts {
            ttl_ns: 100,
            ..RunFacts::default()
        };
        let without = check(&entries, &facts);
        assert_eq!(
            (without.overlapping_holders, without.fencing_regressions),
            (2, 1),
            "without a recorded loss these are violations"
        );
        facts.server_restarts = 1;
        facts.data_losses.push((50, 55));
        let with = check(&entries, &facts);
        assert_eq!(with.violations(), 0);
        assert_eq!(with.across_data_loss, 3);
        assert_eq!((with.server_restarts, with.store_data_losses), (1, 1));
    }

    #[test]
    fn a_data_loss_never_excuses_rising_tokens_or_grants_long_after_it() {
        let mut facts = RunFacts {
            ttl_ns: 100,
            data_losses: vec![(50, 55)],
            ..RunFacts::default()
        };
        // A greater token overlapping: the same store minted both; a real overlap.
        let rising = vec![
            grant("k", 1, 1, 0),
            end("k", 1, 1, 100),
            grant("k", 2, 2, 60),
        ];
        assert_eq!(check(&rising, &facts).overlapping_holders, 1);
        // Both grants seen more than a TTL after the store came back: the new store's own.
        let later = vec![
            grant("k", 5, 1, 200),
            end("k", 5, 1, 300),
            grant("k", 4, 2, 250),
        ];
        let c = check(&later, &facts);
        assert_eq!((c.overlapping_holders, c.fencing_regressions), (1, 1));
        // A store that kept its data (Azurite on disk): nothing is excused.
        facts.data_losses.clear();
        facts.server_restarts = 1;
        let entries = vec![
            grant("k", 7, 1, 0),
            end("k", 7, 1, 40),
            grant("k", 3, 2, 60),
        ];
        assert_eq!(check(&entries, &facts).fencing_regressions, 1);
    }

    #[test]
    fn a_store_that_forgot_its_leases_excuses_overlaps_across_the_restart_never_regressions() {
        // Token 937 renewed until 150; the restarted store forgot the lease and granted 938 at
        // 80 (tokens kept rising: the counters survived).
        let entries = vec![
            grant("k", 937, 1, 0),
            end("k", 937, 1, 150),
            grant("k", 938, 2, 80),
            end("k", 938, 2, 90),
            grant("k", 939, 2, 95),
        ];
        let mut facts = RunFacts {
            ttl_ns: 100,
            ..RunFacts::default()
        };
        assert_eq!(check(&entries, &facts).overlapping_holders, 2);
        facts.lease_losses.push((60, 75));
        let c = check(&entries, &facts);
        assert_eq!((c.violations(), c.across_data_loss), (0, 2));
        assert_eq!(c.store_lease_losses, 1);
        // A token that went back is still a regression: only the leases were forgotten.
        let back = vec![
            grant("k", 937, 1, 0),
            end("k", 937, 1, 50),
            grant("k", 936, 2, 80),
        ];
        assert_eq!(check(&back, &facts).fencing_regressions, 1);
        // An overlap wholly after the restart (both seen after up + TTL) is the library's.
        let after = vec![
            grant("k", 5, 1, 200),
            end("k", 5, 1, 300),
            grant("k", 6, 2, 250),
        ];
        assert_eq!(check(&after, &facts).overlapping_holders, 1);
    }

    #[test]
    fn a_loss_signalled_after_the_next_grant_is_counted_unless_frozen() {
        let entries = vec![
            grant("k", 1, 1, 0),
            Entry::End {
                key: "k".into(),
                token: 1,
                pid: 1,
                end: 100,
                lost: true,
                signalled: Some(300),
            },
            grant("k", 2, 2, 200),
        ];
        let mut facts = RunFacts::default();
        let c = check(&entries, &facts);
        assert_eq!((c.leases_lost, c.losses_signalled), (1, 1));
        assert_eq!(c.losses_signalled_after_next_grant, 1);
        facts.paused.insert(1, vec![(50, 250)]);
        assert_eq!(check(&entries, &facts).losses_signalled_after_next_grant, 0);
    }
}
