//! The fencing record stored in a lease blob's metadata, and the lease id derived from a holder
//! token.
//!
//! Five metadata entries, all written in one `Set Blob Metadata` call by the lease holder:
//!
//! | name | value |
//! |---|---|
//! | `leaseformat` | `1` |
//! | `leasefencing` | the last fencing token issued for the key, decimal |
//! | `leaseholder` | the holder token of the grant that issued it, 32 hex digits |
//! | `leasettl` | the lease duration of that grant, whole seconds |
//! | `leaseowner` | the holder's metadata, percent-encoded (header values are ASCII) |
//!
//! Other metadata entries on the blob (someone else's) are kept as they are.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use lease_core::{FencingToken, HolderMetadata, HolderToken};

/// Metadata names (lowercase: HTTP header names arrive lowercased).
pub(crate) const FORMAT: &str = "leaseformat";
pub(crate) const FENCING: &str = "leasefencing";
pub(crate) const HOLDER: &str = "leaseholder";
pub(crate) const TTL: &str = "leasettl";
pub(crate) const OWNER: &str = "leaseowner";

/// The only format this version writes and reads.
pub(crate) const FORMAT_VERSION: &str = "1";

/// What the last fenced grant stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FenceRecord {
    pub(crate) fencing: FencingToken,
    pub(crate) holder: HolderToken,
    pub(crate) ttl: Duration,
    pub(crate) owner: HolderMetadata,
}

/// Why stored metadata could not be read as a fencing record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("blob metadata `{name}` {problem}")]
pub(crate) struct DecodeError {
    name: &'static str,
    problem: String,
}

fn lookup<'a>(metadata: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads the fencing record from a blob's metadata.
///
/// `Ok(None)` when the blob was never fenced (none of our entries present: a fresh or foreign
/// blob, whose counter is 0). Entries that are present but malformed, or a format this version
/// does not know, are an error: the counter must never silently restart.
pub(crate) fn decode(
    metadata: &HashMap<String, String>,
) -> Result<Option<FenceRecord>, DecodeError> {
    let ours = [FORMAT, FENCING, HOLDER, TTL, OWNER];
    if ours.iter().all(|name| lookup(metadata, name).is_none()) {
        return Ok(None);
    }
    let bad = |name: &'static str, problem: String| DecodeError { name, problem };
    let required =
        |name: &'static str| lookup(metadata, name).ok_or_else(|| bad(name, "is missing".into()));
    let format = required(FORMAT)?;
    if format != FORMAT_VERSION {
        return Err(bad(
            FORMAT,
            format!("is {format:?}; this version reads format {FORMAT_VERSION}"),
        ));
    }
    let fencing = required(FENCING)?;
    let fencing = parse_decimal(fencing)
        .ok_or_else(|| bad(FENCING, format!("is {fencing:?}, not a decimal counter")))?;
    let holder = required(HOLDER)?;
    let holder: HolderToken = holder
        .parse()
        .map_err(|_| bad(HOLDER, format!("is {holder:?}, not a holder token")))?;
    let ttl = required(TTL)?;
    let ttl =
        parse_decimal(ttl).ok_or_else(|| bad(TTL, format!("is {ttl:?}, not whole seconds")))?;
    let owner = lookup(metadata, OWNER).unwrap_or("");
    Ok(Some(FenceRecord {
        fencing: FencingToken::new(fencing),
        holder,
        ttl: Duration::from_secs(ttl),
        owner: HolderMetadata::from_stored_lossy(&percent_decode(owner)),
    }))
}

/// Only plain ASCII digits (no sign, no spaces), so every stored form has one reading.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `existing` without our entries: someone else's entries only.
pub(crate) fn without_ours(existing: &HashMap<String, String>) -> HashMap<String, String> {
    let ours = [FORMAT, FENCING, HOLDER, TTL, OWNER];
    existing
        .iter()
        .filter(|(k, _)| !ours.iter().any(|o| k.eq_ignore_ascii_case(o)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The metadata to write for `record`: `existing` (someone else's entries are kept) with ours set.
pub(crate) fn encode(
    existing: &HashMap<String, String>,
    record: &FenceRecord,
) -> HashMap<String, String> {
    let mut out = without_ours(existing);
    out.insert(FORMAT.into(), FORMAT_VERSION.into());
    out.insert(FENCING.into(), record.fencing.get().to_string());
    out.insert(HOLDER.into(), record.holder.to_string());
    out.insert(TTL.into(), record.ttl.as_secs().to_string());
    out.insert(OWNER.into(), percent_encode(record.owner.as_str()));
    out
}

/// Percent-encodes everything but unreserved-looking visible ASCII, so the value is a valid,
/// untrimmed HTTP header value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~()@:/=+,".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The inverse of [`percent_encode`]; malformed escapes are kept literally, invalid UTF-8 is
/// replaced (the value is for display only).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The Azure lease id for a holder token: its 128 bits in GUID form (`8-4-4-4-12` hex digits).
/// Deterministic, so a retried acquire proposes the same id and finds its own lease.
pub(crate) fn lease_id(holder: &HolderToken) -> String {
    let hex = holder.to_string();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(fencing: u64, holder: [u8; 16], ttl: u64, owner: &str) -> FenceRecord {
        FenceRecord {
            fencing: FencingToken::new(fencing),
            holder: HolderToken::from_bytes(holder),
            ttl: Duration::from_secs(ttl),
            owner: HolderMetadata::from_stored_lossy(owner),
        }
    }

    #[test]
    fn lease_ids_are_guids_of_the_holder_token() {
        let holder: HolderToken = "00112233445566778899aabbccddeeff".parse().unwrap();
        assert_eq!(lease_id(&holder), "00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn a_blob_without_our_entries_was_never_fenced() {
        let mut foreign = HashMap::new();
        assert_eq!(decode(&foreign), Ok(None));
        foreign.insert("owner".into(), "finance team".into());
        assert_eq!(decode(&foreign), Ok(None));
    }

    #[test]
    fn malformed_entries_are_errors_not_a_reset_counter() {
        let good = encode(&HashMap::new(), &record(7, [1; 16], 30, "w"));
        for (name, value) in [
            (FENCING, "-1"),
            (FENCING, "seven"),
            (FENCING, " 7"),
            (FENCING, "18446744073709551616"),
            (HOLDER, "xyz"),
            (TTL, "1.5"),
            (FORMAT, "2"),
        ] {
            let mut meta = good.clone();
            meta.insert(name.into(), value.into());
            let err = decode(&meta).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
        let mut missing = good.clone();
        missing.remove(FENCING);
        assert!(
            decode(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
    }

    #[test]
    fn foreign_entries_survive_and_names_match_in_any_case() {
        let mut existing = HashMap::new();
        existing.insert("Department".to_owned(), "finance".to_owned());
        existing.insert("LEASEFENCING".to_owned(), "3".to_owned());
        let written = encode(&existing, &record(4, [2; 16], 15, "a b"));
        assert_eq!(
            written.get("Department").map(String::as_str),
            Some("finance")
        );
        assert_eq!(written.get(FENCING).map(String::as_str), Some("4"));
        assert!(!written.contains_key("LEASEFENCING"));
        assert_eq!(written.get(OWNER).map(String::as_str), Some("a%20b"));
        let upper: HashMap<String, String> = written
            .into_iter()
            .map(|(k, v)| (k.to_uppercase(), v))
            .collect();
        assert_eq!(
            decode(&upper).unwrap().unwrap().fencing,
            FencingToken::new(4)
        );
    }

    proptest! {
        #[test]
        fn records_round_trip(
            fencing in any::<u64>(),
            holder in any::<[u8; 16]>(),
            ttl in 15u64..=60,
            owner in "\\PC{0,80}",
            foreign_value in "[ -~]{0,20}",
        ) {
            let mut existing = HashMap::new();
            existing.insert("keepme".to_owned(), foreign_value.clone());
            let rec = record(fencing, holder, ttl, &owner);
            let meta = encode(&existing, &rec);
            prop_assert_eq!(meta.get("keepme"), Some(&foreign_value));
            for (name, value) in &meta {
                if name != "keepme" {
                    prop_assert!(value.bytes().all(|b| b.is_ascii_graphic()), "{name}={value:?}");
                }
            }
            prop_assert_eq!(decode(&meta), Ok(Some(rec)));
        }

        #[test]
        fn decoding_arbitrary_metadata_never_panics(
            entries in proptest::collection::hash_map(
                prop_oneof![
                    Just(FORMAT.to_owned()), Just(FENCING.to_owned()), Just(HOLDER.to_owned()),
                    Just(TTL.to_owned()), Just(OWNER.to_owned()), "[a-z]{1,8}",
                ],
                "\\PC{0,40}",
                0..6,
            ),
        ) {
            let _ = decode(&entries);
        }

        #[test]
        fn percent_decoding_arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = percent_decode(&s);
            prop_assert_eq!(percent_decode(&percent_encode(&s)), s);
        }
    }
}
