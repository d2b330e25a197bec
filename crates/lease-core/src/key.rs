//! Lease keys: the names leases are taken on.

use std::fmt;
use std::str::FromStr;

use crate::error::InvalidInput;

/// The name of a lease, validated once so every backend can store it as-is.
///
/// A key is 1 to [`LeaseKey::MAX_LEN`] bytes of ASCII letters, digits and `_ - . / : @`, and does not
/// start with `/` or `.`. That set is safe as a SQL value, an Azure blob name and an object-store path
/// segment without escaping, so two different keys never map to the same stored record.
///
/// ```
/// use lease_core::LeaseKey;
///
/// let key = LeaseKey::new("jobs/nightly-backup")?;
/// assert_eq!(key.as_str(), "jobs/nightly-backup");
/// assert!(LeaseKey::new("").is_err());
/// assert!(LeaseKey::new("has space").is_err());
/// # Ok::<(), lease_core::InvalidInput>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseKey(String);

impl LeaseKey {
    /// The longest key accepted, in bytes.
    pub const MAX_LEN: usize = 200;

    /// Validates `key` and wraps it.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the field `key` when the key is empty, too long, starts with `/` or
    /// `.`, contains `..`, or contains a character outside the documented set.
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidInput> {
        let key = key.into();
        let fail = |reason: String| Err(InvalidInput::new("key", reason));
        if key.is_empty() {
            return fail("must not be empty".into());
        }
        if key.len() > Self::MAX_LEN {
            return fail(format!(
                "is {} bytes long; at most {} are allowed",
                key.len(),
                Self::MAX_LEN
            ));
        }
        if let Some(bad) = key.chars().find(|c| !is_key_char(*c)) {
            return fail(format!(
                "contains {bad:?}; allowed are ASCII letters, digits and _ - . / : @"
            ));
        }
        if key.starts_with('/') || key.starts_with('.') {
            return fail("must not start with '/' or '.'".into());
        }
        if key.contains("..") || key.contains("//") {
            return fail("must not contain '..' or '//'".into());
        }
        Ok(Self(key))
    }

    /// Checks that `prefix` could begin a key (used to list keys): at most [`LeaseKey::MAX_LEN`]
    /// bytes of the key character set. The empty prefix is valid and matches every key.
    ///
    /// ```
    /// use lease_core::LeaseKey;
    /// assert!(LeaseKey::check_prefix("jobs/").is_ok());
    /// assert!(LeaseKey::check_prefix("").is_ok());
    /// assert!(LeaseKey::check_prefix("50%").is_err());
    /// ```
    ///
    /// # Errors
    /// [`InvalidInput`] naming the field `prefix`.
    pub fn check_prefix(prefix: &str) -> Result<(), InvalidInput> {
        if prefix.len() > Self::MAX_LEN {
            return Err(InvalidInput::new(
                "prefix",
                format!(
                    "is {} bytes long; at most {} are allowed",
                    prefix.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        if let Some(bad) = prefix.chars().find(|c| !is_key_char(*c)) {
            return Err(InvalidInput::new(
                "prefix",
                format!("contains {bad:?}; allowed are ASCII letters, digits and _ - . / : @"),
            ));
        }
        Ok(())
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | '@')
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseKey({:?})", self.0)
    }
}

impl AsRef<str> for LeaseKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for LeaseKey {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for LeaseKey {
    type Error = InvalidInput;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for LeaseKey {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_characters() {
        for ok in [
            "a",
            "jobs/nightly",
            "tenant:42@eu-west_1.v2",
            &"k".repeat(200),
        ] {
            assert_eq!(LeaseKey::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_with_reason() {
        for (bad, needle) in [
            ("", "empty"),
            ("a b", "' '"),
            ("é", "'é'"),
            ("/abs", "start"),
            (".hidden", "start"),
            ("a/../b", ".."),
            ("a//b", "//"),
            ("x'; DROP TABLE leases; --", "'\\''"),
        ] {
            let err = LeaseKey::new(bad).unwrap_err();
            assert_eq!(err.field(), "key");
            assert!(err.to_string().contains(needle), "{bad:?}: {err}");
        }
        assert!(
            LeaseKey::new("k".repeat(201))
                .unwrap_err()
                .to_string()
                .contains("201")
        );
    }
}
