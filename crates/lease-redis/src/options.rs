//! Options: the key prefix and the client's timeouts.

use std::fmt;
use std::time::Duration;

use lease_core::InvalidInput;

/// The prefix of every Redis key this backend writes (default `lease:`).
///
/// A lease on `jobs/x` lives at `PREFIX{jobs/x}` and its fencing counter at
/// `PREFIX{jobs/x}:fence`. The braces are a Redis Cluster hash tag, so both keys share a slot; a
/// lease key never contains braces (see [`LeaseKey`](lease_core::LeaseKey)), and the prefix may
/// not either, or the hash tag would be the prefix's. The prefix is also used as a `SCAN`/
/// `PSUBSCRIBE` pattern, so glob characters are refused too.
///
/// 0 to 64 bytes of ASCII letters, digits and `_ - . / : @`.
///
/// ```
/// use lease_redis::KeyPrefix;
/// assert_eq!(KeyPrefix::new("app1:locks:")?.as_str(), "app1:locks:");
/// assert!(KeyPrefix::new("a{b}").is_err());
/// assert!(KeyPrefix::new("a*").is_err());
/// assert_eq!(KeyPrefix::default().as_str(), "lease:");
/// # Ok::<(), lease_redis::InvalidInput>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// The longest prefix accepted, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates `prefix`.
    ///
    /// # Errors
    /// [`InvalidInput`] for the field `key prefix` when it is too long or has a character outside
    /// the set above.
    pub fn new(prefix: impl Into<String>) -> Result<Self, InvalidInput> {
        let prefix = prefix.into();
        if prefix.len() > Self::MAX_LEN {
            return Err(InvalidInput::new(
                "key prefix",
                format!(
                    "is {} bytes long; at most {} are allowed",
                    prefix.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        if let Some(bad) = prefix.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | '@'))
        }) {
            return Err(InvalidInput::new(
                "key prefix",
                format!(
                    "contains {bad:?}; allowed are ASCII letters, digits and _ - . / : @ \
                     (braces would change the Cluster hash tag, glob characters the SCAN pattern)"
                ),
            ));
        }
        Ok(Self(prefix))
    }

    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self("lease:".to_owned())
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPrefix({:?})", self.0)
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for KeyPrefix {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Options of a [`RedisBackend`](crate::RedisBackend).
///
/// ```
/// use std::time::Duration;
/// use lease_redis::{KeyPrefix, RedisOptions};
/// let options = RedisOptions::default()
///     .with_prefix(KeyPrefix::new("billing:")?)
///     .with_response_timeout(Duration::from_secs(1));
/// assert_eq!(options.prefix.as_str(), "billing:");
/// # Ok::<(), lease_redis::InvalidInput>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// The key prefix (default `lease:`).
    pub prefix: KeyPrefix,
    /// How long one request waits for its answer before it is a transient error whose outcome is
    /// unknown (default 2 s; the protocol also bounds every call by the lease's remaining time).
    pub response_timeout: Duration,
    /// How long connecting (and reconnecting) may take (default 2 s).
    pub connection_timeout: Duration,
    /// The most keys one `renew_many` script call renews (default 1,000): a script blocks the
    /// server while it runs, so larger batches are split into several calls.
    pub max_batch: usize,
    /// Put only keys of one Redis Cluster hash slot in each `renew_many` script call (default
    /// off: one call for the whole batch). For servers that refuse multi-slot scripts
    /// (`CROSSSLOT`): a Cluster node behind a cluster-aware proxy.
    pub batch_by_slot: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: KeyPrefix::default(),
            response_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(2),
            max_batch: 1000,
            batch_by_slot: false,
        }
    }
}

impl RedisOptions {
    /// Sets the key prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// Sets the response timeout.
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets the connection timeout.
    #[must_use]
    pub fn with_connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Sets whether batch renewals are split by Redis Cluster hash slot.
    #[must_use]
    pub fn with_batch_by_slot(mut self, yes: bool) -> Self {
        self.batch_by_slot = yes;
        self
    }

    /// Sets the most keys one batch renewal call carries (at least 1).
    #[must_use]
    pub fn with_max_batch(mut self, max: usize) -> Self {
        self.max_batch = max.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_prefixes_are_refused() {
        for bad in [
            "{",
            "}",
            "a{b}",
            "*",
            "a?",
            "[x]",
            "a\\b",
            "sp ace",
            "é",
            &"a".repeat(65),
        ] {
            let err = KeyPrefix::new(bad).unwrap_err();
            assert_eq!(err.field(), "key prefix", "{bad:?}");
        }
        for ok in ["", "lease:", "app/locks@eu-1.", &"a".repeat(64)] {
            assert_eq!(KeyPrefix::new(ok).unwrap().as_str(), ok);
        }
    }
}
