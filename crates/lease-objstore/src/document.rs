//! The stored format: one small versioned JSON document per key, and its strict decoder.
//!
//! ```json
//! {"format":"lease-objstore/1","holder":"5f0c…(32 hex digits)","metadata":"host-a pid=42",
//!  "fencing":7,"ttl_ms":30000,"acquired_at_ms":1763900000000,"revision":12}
//! ```
//!
//! A free lease has `holder`, `metadata`, `ttl_ms` and `acquired_at_ms` set to `null` and keeps
//! `fencing`. `revision` counts the writes, so every write's bytes differ (an S3 ETag is a hash of
//! the bytes). Anything else — another format version, a missing or unknown field, a malformed
//! token, an object larger than [`MAX_DOCUMENT_BYTES`] — is not a lease document.

use std::time::{Duration, UNIX_EPOCH};

use lease_core::observed::StoredLease;
use lease_core::{FencingToken, HolderMetadata, HolderToken};
use serde::{Deserialize, Serialize};

/// The `format` value this version writes and reads.
pub(crate) const FORMAT: &str = "lease-objstore/1";

/// Objects larger than this are not lease documents (ours are under 1 KiB); they are reported as
/// corrupt without being read.
pub const MAX_DOCUMENT_BYTES: u64 = 16 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: String,
    holder: Option<String>,
    metadata: Option<String>,
    fencing: u64,
    ttl_ms: Option<u64>,
    acquired_at_ms: Option<u64>,
    revision: u64,
}

/// Just the `format` field of a JSON object, whatever else it holds.
#[derive(Deserialize)]
struct FormatOnly {
    format: String,
}

/// Why some bytes are not a lease document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotALease(String);

/// Encodes `lease` as the JSON document. The TTL is rounded up to whole milliseconds (a contender
/// may only wait longer for it, never shorter).
pub(crate) fn encode(lease: &StoredLease) -> Vec<u8> {
    let ttl_ms = lease.ttl.map(|ttl| {
        let ms = ttl.as_millis() + u128::from(ttl.subsec_nanos() % 1_000_000 != 0);
        u64::try_from(ms).unwrap_or(u64::MAX)
    });
    let document = Document {
        format: FORMAT.to_owned(),
        holder: lease.holder.map(|h| h.to_string()),
        metadata: lease.metadata.as_ref().map(|m| m.as_str().to_owned()),
        fencing: lease.fencing.get(),
        ttl_ms,
        acquired_at_ms: lease.acquired_at.and_then(|t| {
            let since = t.duration_since(UNIX_EPOCH).ok()?;
            u64::try_from(since.as_millis()).ok()
        }),
        revision: lease.revision,
    };
    // Serialising a struct of strings and integers cannot fail.
    serde_json::to_vec(&document).unwrap_or_default()
}

/// Decodes a lease document, strictly.
///
/// # Errors
/// [`NotALease`] saying what is wrong, for anything but a document this version wrote.
pub fn decode(bytes: &[u8]) -> Result<StoredLease, NotALease> {
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    // The format first: a later version's document (with fields this version does not know) is
    // "unknown format", not "unknown field".
    let format: FormatOnly = serde_json::from_slice(bytes)
        .map_err(|e| NotALease(format!("not a lease document ({e})")))?;
    if format.format != FORMAT {
        return Err(NotALease(format!(
            "unknown format {:?} (this version reads {FORMAT:?})",
            truncate(&format.format)
        )));
    }
    let document: Document = serde_json::from_slice(bytes)
        .map_err(|e| NotALease(format!("not a lease document ({e})")))?;
    let fencing = FencingToken::new(document.fencing);
    let mut lease = match document.holder {
        None => {
            if document.ttl_ms.is_some() || document.metadata.is_some() {
                return Err(NotALease(
                    "a free lease with a TTL or a holder's metadata".into(),
                ));
            }
            StoredLease::free(fencing)
        }
        Some(holder) => {
            let holder: HolderToken = holder
                .parse()
                .map_err(|_| NotALease("the holder is not a 32-hex-digit token".into()))?;
            let ttl = document
                .ttl_ms
                .filter(|ms| *ms > 0)
                .ok_or_else(|| NotALease("a held lease without a positive ttl_ms".into()))?;
            if fencing.get() == 0 {
                return Err(NotALease("a held lease with fencing token 0".into()));
            }
            let mut lease = StoredLease::held(holder, fencing, Duration::from_millis(ttl));
            if let Some(metadata) = document.metadata {
                lease = lease.with_metadata(HolderMetadata::from_stored_lossy(&metadata));
            }
            lease
        }
    };
    lease = lease
        .with_acquired_at(
            document
                .acquired_at_ms
                .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
        )
        .with_revision(document.revision);
    Ok(lease)
}

pub(crate) fn too_large(size: u64) -> NotALease {
    NotALease(format!(
        "{size} bytes, larger than any lease document ({MAX_DOCUMENT_BYTES} bytes at most)"
    ))
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn held() -> StoredLease {
        StoredLease::held(
            HolderToken::generate(),
            FencingToken::new(7),
            Duration::from_millis(1500),
        )
        .with_metadata(HolderMetadata::from_stored_lossy("host pid=1"))
        .with_revision(3)
    }

    #[test]
    fn round_trips_held_and_free() {
        let lease = held();
        let back = decode(&encode(&lease)).unwrap();
        assert_eq!(back.holder, lease.holder);
        assert_eq!(back.fencing, lease.fencing);
        assert_eq!(back.ttl, lease.ttl);
        assert_eq!(back.metadata, lease.metadata);
        assert_eq!(back.revision, 3);
        let free = StoredLease::free(FencingToken::new(9)).with_revision(4);
        assert_eq!(decode(&encode(&free)).unwrap(), free);
    }

    #[test]
    fn ttl_is_rounded_up_to_whole_milliseconds() {
        let lease = StoredLease::held(
            HolderToken::generate(),
            FencingToken::new(1),
            Duration::from_micros(1001),
        );
        assert_eq!(
            decode(&encode(&lease)).unwrap().ttl,
            Some(Duration::from_millis(2))
        );
    }

    #[test]
    fn every_revision_has_different_bytes() {
        let lease = held();
        assert_ne!(encode(&lease), encode(&lease.clone().with_revision(4)));
    }

    #[test]
    fn foreign_shapes_are_refused() {
        let h = HolderToken::generate();
        for bad in [
            String::new(),
            "null".into(),
            "[]".into(),
            r#"{"name":"x"}"#.into(),
            r#"{"format":"lease-objstore/2","holder":null,"metadata":null,"fencing":1,"ttl_ms":null,"acquired_at_ms":null,"revision":1}"#.into(),
            r#"{"format":"lease-objstore/1","holder":null,"metadata":null,"fencing":1,"ttl_ms":null,"acquired_at_ms":null,"revision":1,"extra":true}"#.into(),
            r#"{"format":"lease-objstore/1","holder":null,"metadata":null,"fencing":-1,"ttl_ms":null,"acquired_at_ms":null,"revision":1}"#.into(),
            format!(r#"{{"format":"lease-objstore/1","holder":"{h}","metadata":null,"fencing":1,"ttl_ms":null,"acquired_at_ms":null,"revision":1}}"#),
            format!(r#"{{"format":"lease-objstore/1","holder":"{h}","metadata":null,"fencing":0,"ttl_ms":5,"acquired_at_ms":null,"revision":1}}"#),
            r#"{"format":"lease-objstore/1","holder":"nothex","metadata":null,"fencing":1,"ttl_ms":5,"acquired_at_ms":null,"revision":1}"#.into(),
        ] {
            assert!(decode(bad.as_bytes()).is_err(), "accepted {bad}");
        }
        assert!(decode(&vec![b' '; MAX_DOCUMENT_BYTES as usize + 1]).is_err());
    }

    /// Item 10 of issue 19: a later version's document is reported by its format.
    #[test]
    fn a_future_format_with_new_fields_is_an_unknown_format() {
        let future = br#"{"format":"lease-objstore/2","holder":null,"fencing":1,"expires_at_ms":5,"revision":1}"#;
        let why = decode(future).unwrap_err().to_string();
        assert!(why.contains("unknown format \"lease-objstore/2\""), "{why}");
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoder_never_panics_on_mutated_documents(pos in 0usize..200, byte in any::<u8>()) {
            let mut bytes = encode(&held());
            let at = pos % bytes.len();
            bytes[at] = byte;
            if let Ok(lease) = decode(&bytes) {
                // Whatever it accepts is a well-formed lease.
                prop_assert!(lease.holder.is_none() || lease.ttl.is_some());
            }
        }

        #[test]
        fn held_leases_round_trip(fencing in 1u64.., ttl_ms in 1u64..1_000_000_000, revision in any::<u64>(), meta in "[ -~]{0,64}") {
            let lease = StoredLease::held(HolderToken::generate(), FencingToken::new(fencing), Duration::from_millis(ttl_ms))
                .with_metadata(HolderMetadata::from_stored_lossy(&meta))
                .with_revision(revision);
            let back = decode(&encode(&lease)).unwrap();
            prop_assert_eq!(back.holder, lease.holder);
            prop_assert_eq!(back.fencing, lease.fencing);
            prop_assert_eq!(back.ttl, lease.ttl);
            prop_assert_eq!(back.metadata, lease.metadata);
            prop_assert_eq!(back.revision, revision);
        }
    }
}
