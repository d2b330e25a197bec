//! Wake-ups on release: the release and break scripts `PUBLISH` on the lease key's own name; one
//! connection per backend `PSUBSCRIBE`s to `PREFIX{*}` and wakes the waiters of that key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

/// Per-key wake-ups. A key's generation counts the messages seen for it, so a release that lands
/// between a contended acquire and the waiter's `wait_for_change` is not missed.
#[derive(Default)]
pub(crate) struct Notifier {
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

impl Notifier {
    /// Entries without waiters are dropped past this many keys.
    const MAX_IDLE_KEYS: usize = 4096;

    fn keys(&self) -> MutexGuard<'_, HashMap<String, KeyWatch>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self, key: &str) {
        if let Some(watch) = self.keys().get_mut(key) {
            watch.generation += 1;
            watch.notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for watch in self.keys().values_mut() {
            watch.generation += 1;
            watch.notify.notify_waiters();
        }
    }

    /// Records that a contended acquire on `key` was just answered.
    pub(crate) fn saw_held(&self, key: &str) {
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
    pub(crate) async fn wait(&self, key: &str, max_wait: Duration) {
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

/// The lease key named by a channel `PREFIX{KEY}`, if it is one.
pub(crate) fn key_of_channel<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    channel
        .strip_prefix(prefix)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// The listener loop: subscribe, wake waiters per message; on a lost connection wake everyone
/// (messages may have been missed) and reconnect after a pause. Waiters poll meanwhile.
pub(crate) async fn listen(client: redis::Client, prefix: String, notifier: Arc<Notifier>) {
    let pattern = format!("{prefix}{{*}}");
    loop {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::debug!(error = %e, "redis subscribe connection failed; waiters poll");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = pubsub.psubscribe(&pattern).await {
            tracing::debug!(error = %e, "PSUBSCRIBE failed; waiters poll");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        notifier.listening.store(true, Ordering::SeqCst);
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            if let Some(key) = key_of_channel(&prefix, message.get_channel_name()) {
                notifier.wake(key);
            }
        }
        notifier.listening.store(false, Ordering::SeqCst);
        notifier.wake_all();
        tracing::debug!("redis subscribe connection closed; reconnecting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_keys() {
        assert_eq!(key_of_channel("lease:", "lease:{a/b}"), Some("a/b"));
        assert_eq!(key_of_channel("lease:", "other:{a}"), None);
        assert_eq!(key_of_channel("lease:", "lease:{a"), None);
        assert_eq!(key_of_channel("", "{k}"), Some("k"));
    }
}
