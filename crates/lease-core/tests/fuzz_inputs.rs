//! Property tests over untrusted inputs of lease-core: keys, key prefixes, holder metadata and
//! the locker's durations. Arbitrary input never panics; what is accepted satisfies the documented
//! rules and round-trips; what is refused is an `InvalidInput` naming the field.

use std::time::Duration;

use lease_core::{HolderMetadata, LeaseKey, Locker, MemoryBackend};
use proptest::prelude::*;

/// Strings biased towards the key alphabet and its troublemakers (`/`, `.`, non-ASCII).
fn key_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_./:@-]{0,210}",
        "[a./]{0,8}",
        "[A-Za-z0-9_./:@ \u{e9}\u{0}\u{202e}-]{0,40}",
    ]
}

fn documented_key_rule(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= LeaseKey::MAX_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@".contains(c))
        && !s.starts_with('/')
        && !s.starts_with('.')
        && !s.contains("..")
        && !s.contains("//")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn keys_are_accepted_exactly_by_the_documented_rule_and_round_trip(s in key_like()) {
        match LeaseKey::new(s.clone()) {
            Ok(key) => {
                prop_assert!(documented_key_rule(&s), "accepted {s:?}");
                prop_assert_eq!(key.as_str(), s.as_str());
                prop_assert_eq!(key.to_string(), s.clone());
                prop_assert_eq!(s.parse::<LeaseKey>().unwrap(), key);
            }
            Err(e) => {
                prop_assert!(!documented_key_rule(&s), "refused {s:?}: {e}");
                prop_assert_eq!(e.field(), "key");
                prop_assert!(!e.reason().is_empty());
            }
        }
    }

    #[test]
    fn every_valid_key_passes_as_a_prefix_and_prefixes_never_panic(s in key_like()) {
        let prefix_ok = LeaseKey::check_prefix(&s).is_ok();
        if LeaseKey::new(s.clone()).is_ok() {
            prop_assert!(prefix_ok, "{s:?} is a key but not a prefix");
        }
        if prefix_ok {
            prop_assert!(s.len() <= LeaseKey::MAX_LEN);
        }
    }

    #[test]
    fn holder_metadata_never_panics_and_keeps_what_it_accepts(s in any::<String>()) {
        if let Ok(m) = HolderMetadata::new(s.clone()) {
            prop_assert_eq!(m.as_str(), s.as_str());
        }
        // Stored metadata is read back lossily, never refused.
        let _ = HolderMetadata::from_stored_lossy(&s);
    }

    #[test]
    fn locker_durations_build_or_are_refused_never_panic(
        ttl_ms in prop_oneof![0u64..100, 0u64..600_000, Just(u64::MAX / 2_000_000)],
        margin_ms in prop_oneof![Just(None), (0u64..120_000).prop_map(Some)],
        interval_ms in prop_oneof![Just(None), (0u64..120_000).prop_map(Some)],
        drift in prop_oneof![Just(None), (-1.0f64..1.5).prop_map(Some), Just(Some(f64::NAN)), Just(Some(f64::INFINITY))],
    ) {
        let mut b = Locker::builder(MemoryBackend::new()).ttl(Duration::from_millis(ttl_ms));
        if let Some(m) = margin_ms {
            b = b.safety_margin(Duration::from_millis(m));
        }
        if let Some(i) = interval_ms {
            b = b.renew_interval(Duration::from_millis(i));
        }
        if let Some(d) = drift {
            b = b.max_clock_drift(d);
        }
        match b.build() {
            Ok(locker) => {
                let o = locker.options();
                let window = o.holder_window(o.ttl);
                prop_assert!(!window.is_zero(), "a built locker has a positive holder window");
                prop_assert!(window < o.ttl, "the window is shorter than the TTL");
                prop_assert!(o.renew_interval < window, "renewal comes before the deadline");
            }
            Err(e) => prop_assert!(!e.reason().is_empty()),
        }
    }
}
