//! Per-key wake-ups for backends whose store announces releases (PostgreSQL `NOTIFY`, Redis
//! `PUBLISH`): the bookkeeping between the store's messages and
//! [`Backend::wait_for_change`](crate::Backend::wait_for_change), written once.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// Waiters per key, woken by a backend's listener when the store announces a release.
///
/// A key's *generation* counts the messages seen for it, so a release that lands between a
/// contended acquire and the waiter's [`KeyWakeups::wait`] is not missed: the backend calls
/// [`KeyWakeups::saw_held`] when it answers an acquire "held", and `wait` returns at once if a
/// message came since. While the listener is down ([`KeyWakeups::set_listening`]), `saw_held` keeps
/// nothing and waiters simply sleep their `max_wait` (polling).
///
/// ```
/// use std::time::Duration;
/// use lease_core::KeyWakeups;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let wakeups = KeyWakeups::default();
/// wakeups.set_listening(true);
/// wakeups.saw_held("jobs/a");          // an acquire was answered "held"
/// wakeups.wake("jobs/a");              // the listener saw its release
/// let started = std::time::Instant::now();
/// wakeups.wait("jobs/a", Duration::from_secs(5)).await;
/// assert!(started.elapsed() < Duration::from_secs(1), "the release was not missed");
/// # }
/// ```
#[derive(Default)]
pub struct KeyWakeups {
    listening: AtomicBool,
    keys: Mutex<HashMap<String, KeyWatch>>,
}

struct KeyWatch {
    generation: u64,
    /// The generation when the last contended acquire on this key was answered.
    seen: u64,
    notify: Arc<Notify>,
}

impl KeyWatch {
    fn new() -> Self {
        Self {
            generation: 0,
            seen: 0,
            notify: Arc::new(Notify::new()),
        }
    }
}

impl fmt::Debug for KeyWakeups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyWakeups")
            .field("listening", &self.listening.load(Ordering::Relaxed))
            .field("keys", &self.keys().len())
            .finish()
    }
}

impl KeyWakeups {
    /// Entries without waiters are dropped past this many keys.
    const MAX_IDLE_KEYS: usize = 4096;

    fn keys(&self) -> MutexGuard<'_, HashMap<String, KeyWatch>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells whether the listener is subscribed (messages arrive) or not (waiters poll).
    pub fn set_listening(&self, yes: bool) {
        self.listening.store(yes, Ordering::SeqCst);
    }

    /// A message about `key` arrived: wakes its waiters.
    pub fn wake(&self, key: &str) {
        if let Some(watch) = self.keys().get_mut(key) {
            watch.generation += 1;
            watch.notify.notify_waiters();
        }
    }

    /// Messages may have been missed (the listener's connection was lost): wakes every waiter to
    /// check again.
    pub fn wake_all(&self) {
        for watch in self.keys().values_mut() {
            watch.generation += 1;
            watch.notify.notify_waiters();
        }
    }

    /// Records that a contended acquire on `key` was just answered.
    pub fn saw_held(&self, key: &str) {
        if !self.listening.load(Ordering::SeqCst) {
            return;
        }
        let mut keys = self.keys();
        if keys.len() >= Self::MAX_IDLE_KEYS && !keys.contains_key(key) {
            keys.retain(|_, w| Arc::strong_count(&w.notify) > 1);
        }
        let watch = keys.entry(key.to_owned()).or_insert_with(KeyWatch::new);
        watch.seen = watch.generation;
    }

    /// Waits for a message about `key` newer than the last contended acquire, or `max_wait`.
    pub async fn wait(&self, key: &str, max_wait: Duration) {
        let (notify, generation) = {
            let mut keys = self.keys();
            let watch = keys.entry(key.to_owned()).or_insert_with(KeyWatch::new);
            if watch.generation != watch.seen {
                // Released since the contended acquire was answered: try again now.
                watch.seen = watch.generation;
                return;
            }
            (Arc::clone(&watch.notify), watch.generation)
        };
        // Registered from here on; a wake-up between the check above and now shows in the
        // generation.
        let notified = notify.notified();
        let missed = self
            .keys()
            .get(key)
            .is_none_or(|w| w.generation != generation);
        if !missed {
            let _ = tokio::time::timeout(max_wait, notified).await;
        }
        if let Some(watch) = self.keys().get_mut(key) {
            watch.seen = watch.generation;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_release_before_the_wait_is_not_missed_and_without_one_the_wait_runs_out() {
        let w = KeyWakeups::default();
        w.set_listening(true);
        w.saw_held("k");
        let started = tokio::time::Instant::now();
        w.wait("k", Duration::from_secs(5)).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "nothing came: waited it out"
        );
        w.saw_held("k");
        w.wake("k");
        let started = tokio::time::Instant::now();
        w.wait("k", Duration::from_secs(5)).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the release came before the wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_on_the_message() {
        let w = Arc::new(KeyWakeups::default());
        w.set_listening(true);
        w.saw_held("k");
        let waiter = tokio::spawn({
            let w = Arc::clone(&w);
            async move {
                let started = tokio::time::Instant::now();
                w.wait("k", Duration::from_secs(5)).await;
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        w.wake("k");
        assert_eq!(waiter.await.unwrap(), Duration::from_millis(100));
    }
}
