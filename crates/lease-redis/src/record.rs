//! The stored lease value and its decoder.
//!
//! The lease key holds one string, written only by the scripts:
//!
//! ```text
//! lease1 <holder: 32 hex digits> <fencing token> <ttl ms> <acquired at: µs since the epoch> <metadata>
//! ```
//!
//! `lease1` is the format's version: a later format gets a new word, and this decoder refuses what
//! it does not know instead of guessing. The metadata comes last and may contain spaces (it has no
//! control characters). The key's own `PX` expiry, not a field, decides when the grant ends.

use std::time::{Duration, UNIX_EPOCH};

use lease_core::{
    BackendError, FencingToken, HolderMetadata, HolderToken, LeaseKey, LeaseRecord, RecordState,
};

use crate::error::NAME;

/// The first word of every value this version writes.
pub(crate) const FORMAT: &str = "lease1";

/// A decoded lease value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) holder: HolderToken,
    pub(crate) fencing: FencingToken,
    pub(crate) ttl: Duration,
    pub(crate) acquired_us: u64,
    pub(crate) metadata: String,
}

impl Stored {
    /// Encodes as the scripts do (used by tests and to document the format).
    #[cfg(test)]
    pub(crate) fn encode(&self) -> String {
        format!(
            "{FORMAT} {} {} {} {} {}",
            self.holder,
            self.fencing,
            self.ttl.as_millis(),
            self.acquired_us,
            self.metadata
        )
    }

    /// Decodes a value read at `key`, or says why it cannot (never panics).
    pub(crate) fn decode(key: &LeaseKey, value: &[u8]) -> Result<Self, BackendError> {
        let corrupt = |what: &str| {
            BackendError::corrupt_record(
                NAME,
                format!("the value at lease {key} {what}; it was left untouched"),
            )
        };
        let text = std::str::from_utf8(value).map_err(|_| corrupt("is not UTF-8"))?;
        let mut parts = text.splitn(6, ' ');
        let format = parts.next().unwrap_or_default();
        if format != FORMAT {
            return Err(corrupt("is not in a lease format this version knows"));
        }
        let (Some(holder), Some(fencing), Some(ttl), Some(acquired), Some(metadata)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(corrupt("has too few fields"));
        };
        let holder: HolderToken = holder
            .parse()
            .map_err(|_| corrupt("has a holder that is not a holder token"))?;
        let fencing = digits(fencing).ok_or_else(|| corrupt("has an unreadable fencing token"))?;
        let ttl = digits(ttl).ok_or_else(|| corrupt("has an unreadable TTL"))?;
        let acquired_us =
            digits(acquired).ok_or_else(|| corrupt("has an unreadable acquisition time"))?;
        Ok(Self {
            holder,
            fencing: FencingToken::new(fencing),
            ttl: Duration::from_millis(ttl),
            acquired_us,
            metadata: metadata.to_owned(),
        })
    }

    /// The record this value describes, `pttl` being the key's remaining time in milliseconds as
    /// `PTTL` answered.
    pub(crate) fn into_record(
        self,
        key: &LeaseKey,
        pttl: i64,
    ) -> Result<LeaseRecord, BackendError> {
        let remaining = u64::try_from(pttl).map_err(|_| {
            BackendError::corrupt_record(
                NAME,
                format!(
                    "the lease key of {key} has no expiry (PTTL {pttl}): something other than this \
                     library wrote or persisted it; it was left untouched"
                ),
            )
        })?;
        let mut record = LeaseRecord::held(key.clone(), self.holder, self.fencing)
            .with_ttl(self.ttl)
            .with_metadata(HolderMetadata::from_stored_lossy(&self.metadata));
        record = if remaining == 0 {
            record
                .with_state(RecordState::Expired)
                .with_expires_in(Duration::ZERO)
        } else {
            record.with_expires_in(Duration::from_millis(remaining))
        };
        if let Some(at) = UNIX_EPOCH.checked_add(Duration::from_micros(self.acquired_us)) {
            record = record.with_acquired_at(at);
        }
        Ok(record)
    }
}

/// A counter value as stored at the `:fence` key.
pub(crate) fn counter(key: &LeaseKey, value: &[u8]) -> Result<FencingToken, BackendError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(digits)
        .map(FencingToken::new)
        .ok_or_else(|| {
            BackendError::corrupt_record(
                NAME,
                format!(
                    "the fencing counter of lease {key} is not a number; it was left untouched"
                ),
            )
        })
}

/// A non-negative decimal of at most 19 digits (no sign, no spaces).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease_core::BackendErrorKind;
    use proptest::prelude::*;

    fn key() -> LeaseKey {
        LeaseKey::new("k").unwrap()
    }

    #[test]
    fn round_trips_with_spaces_in_metadata() {
        let stored = Stored {
            holder: HolderToken::generate(),
            fencing: FencingToken::new(1_733_000_000_000_001),
            ttl: Duration::from_millis(1500),
            acquired_us: 1_733_000_000_000_000,
            metadata: "host a pid=4 (two  spaces)".into(),
        };
        assert_eq!(
            Stored::decode(&key(), stored.encode().as_bytes()).unwrap(),
            stored
        );
        let record = stored.clone().into_record(&key(), 700).unwrap();
        assert!(record.is_held_by(&stored.holder));
        assert_eq!(record.expires_in, Some(Duration::from_millis(700)));
        assert_eq!(record.metadata.unwrap().as_str(), stored.metadata);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let h = HolderToken::generate();
        for bad in [
            "",
            "hello",
            "lease2 x",
            &format!("lease1 {h} 1 2"),
            "lease1 nothex 1 2 3 m",
            &format!("lease1 {h} -1 2 3 m"),
            &format!("lease1 {h} 1 +2 3 m"),
            &format!("lease1 {h} 99999999999999999999 2 3 m"),
        ] {
            let err = Stored::decode(&key(), bad.as_bytes()).unwrap_err();
            assert_eq!(err.kind(), BackendErrorKind::CorruptRecord, "{bad:?}");
        }
        assert!(Stored::decode(&key(), &[0xff, 0xfe]).is_err());
        let ok = format!("lease1 {h} 1 2 3 ");
        let stored = Stored::decode(&key(), ok.as_bytes()).unwrap();
        let err = stored.into_record(&key(), -1).unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::CorruptRecord);
        assert!(counter(&key(), b"12").is_ok());
        assert!(counter(&key(), b"-12").is_err());
        assert!(counter(&key(), b"").is_err());
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = Stored::decode(&key(), &bytes);
            let _ = counter(&key(), &bytes);
        }

        #[test]
        fn decoding_arbitrary_fields_never_panics(
            fencing in "[0-9+-]{0,22}", ttl in "[0-9]{0,21}", meta in ".{0,40}",
        ) {
            let v = format!("lease1 {} {fencing} {ttl} 5 {meta}", HolderToken::generate());
            let _ = Stored::decode(&key(), v.as_bytes()).map(|s| s.into_record(&key(), 5));
        }
    }
}
