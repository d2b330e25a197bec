//! Wake-ups on release: the release and break scripts `PUBLISH` on the lease key's own name; one
//! connection per backend `PSUBSCRIBE`s to `PREFIX{*}` and wakes the waiters of that key.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lease_core::KeyWakeups;

/// The lease key named by a channel `PREFIX{KEY}`, if it is one.
pub(crate) fn key_of_channel<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    channel
        .strip_prefix(prefix)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// The listener loop: subscribe, wake waiters per message; on a lost connection wake everyone
/// (messages may have been missed) and reconnect after a pause. Waiters poll meanwhile.
pub(crate) async fn listen(client: redis::Client, prefix: String, notifier: Arc<KeyWakeups>) {
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
        notifier.set_listening(true);
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            if let Some(key) = key_of_channel(&prefix, message.get_channel_name()) {
                notifier.wake(key);
            }
        }
        notifier.set_listening(false);
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
