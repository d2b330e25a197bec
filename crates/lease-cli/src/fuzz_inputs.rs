//! Property tests over what a user types: durations (`--ttl`, `--timeout`, …) and store URLs.
//! Arbitrary input never panics; what is accepted means what it says and round-trips through the
//! forms `lease` prints; a password or secret query value never appears in what is shown.

use std::time::Duration;

use proptest::prelude::*;

use crate::duration;
use crate::store::{Store, StoreUrl, redact, redact_words};

/// Strings biased towards the duration alphabet.
fn duration_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9 .]{0,30}",
        "[0-9]{0,25}(ns|us|ms|s|m|h|d|w|y|months|years|sec|min)?",
        "[0-9a-z .:+-]{0,24}",
    ]
}

/// Strings biased towards store URLs and the characters that break naive parsers.
fn url_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(sqlite|postgres|postgresql|mysql|mariadb|memory|azblob|s3|gs|az|file|x)://[a-z0-9:@/?#&=%.\\[\\]-]{0,40}",
        "[a-z]{0,8}:/{0,3}[:@/?#&=\u{e9}\u{0}]{0,12}",
    ]
}

/// A password as pasted, unencoded: any printable ASCII except space, behind a marker that
/// appears nowhere else in the URL, so finding it in output means it leaked.
fn raw_password() -> impl Strategy<Value = String> {
    "[!-~]{0,16}".prop_map(|tail| format!("Zq9{tail}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn durations_parse_or_are_refused_never_panic(text in duration_like()) {
        match duration::parse(&text) {
            Ok(_) => prop_assert!(!text.trim().is_empty()),
            Err(why) => prop_assert!(!why.is_empty()),
        }
        if let Ok(d) = duration::parse_positive(&text) {
            prop_assert!(!d.is_zero());
        }
    }

    #[test]
    fn whole_units_mean_what_they_say(n in 0u64..=1_000_000_000) {
        prop_assert_eq!(duration::parse(&format!("{n}ms")), Ok(Duration::from_millis(n)));
        prop_assert_eq!(duration::parse(&format!("{n}s")), Ok(Duration::from_secs(n)));
        prop_assert_eq!(duration::parse(&format!(" {n} ")), Ok(Duration::from_secs(n)));
        prop_assert_eq!(
            duration::parse(&format!("{}m{}s", n / 60, n % 60)),
            Ok(Duration::from_secs(n))
        );
        prop_assert_eq!(duration::parse_positive(&format!("{n}s")).is_ok(), n > 0);
    }

    #[test]
    fn printed_durations_parse_back_to_what_was_shown(nanos in 0u64..=400 * 24 * 3600 * 1_000_000_000) {
        let d = Duration::from_nanos(nanos);
        for shown in [duration::short(d), duration::days_or_short(d)] {
            let back = duration::parse(&shown).map_err(TestCaseError::fail)?;
            // Rounded down, to at worst a whole second.
            prop_assert!(back <= d, "{shown} > {d:?}");
            prop_assert!(d - back < Duration::from_secs(1), "{shown} for {d:?}");
        }
    }

    #[test]
    fn store_urls_parse_or_are_refused_never_panic(text in url_like()) {
        match StoreUrl::parse(&text) {
            Ok(url) => {
                prop_assert_eq!(url.scheme(), text.split_once("://").unwrap().0.to_ascii_lowercase());
                let _ = url.redacted();
                let _ = format!("{url:?}");
            }
            Err(e) => {
                prop_assert_eq!(e.code, crate::exit::USAGE);
                prop_assert!(!e.message.is_empty());
            }
        }
        let _ = redact_words(&text);
    }

    #[test]
    fn a_raw_password_never_shows(
        scheme in "(postgres|postgresql|mysql|mariadb|x)",
        user in "[a-z]{1,6}",
        password in raw_password(),
        host in "(db|127\\.0\\.0\\.1|db1:5432,db2)",
        tail in "(/leases|/leases\\?sslmode=require|)",
    ) {
        let text = format!("{scheme}://{user}:{password}@{host}{tail}");
        prop_assert!(!redact(&text).contains(&password), "{}", redact(&text));
        let sentence = format!("bad store {text} given");
        prop_assert!(!redact_words(&sentence).contains(&password));
        match StoreUrl::parse(&text) {
            Ok(url) => {
                prop_assert!(!url.redacted().contains(&password), "{}", url.redacted());
                let debug = format!("{url:?}");
                prop_assert!(!debug.contains(&password), "{}", debug);
                let driver_message = format!("error connecting with password {password} to {text}");
                prop_assert!(!url.scrub(&driver_message).contains(&password));
            }
            Err(e) => prop_assert!(!e.message.contains(&password), "{}", e.message),
        }
    }

    #[test]
    fn secret_query_values_never_show(
        name in "(sig|sas|password|Secret|access_token|AccountKey|pwd)",
        value in "[!-~&&[^&#]]{3,20}".prop_map(|v| format!("Zq9{v}")),
        scheme in "(azblob|s3|postgres)",
    ) {
        let text = format!("{scheme}://acct/container/p?x=1&{name}={value}&y=2");
        prop_assert!(!redact(&text).contains(&value), "{}", redact(&text));
        match StoreUrl::parse(&text) {
            Ok(url) => {
                prop_assert!(!url.redacted().contains(&value));
                let debug = format!("{url:?}");
                prop_assert!(!debug.contains(&value), "{}", debug);
            }
            Err(e) => prop_assert!(!e.message.contains(&value), "{}", e.message),
        }
    }

    #[test]
    fn bucket_urls_round_trip_through_their_shown_form(
        scheme in "(s3|gs|az)",
        bucket in "[a-z0-9][a-z0-9.-]{0,20}",
        prefix in "([a-z0-9_-]{1,8}/){0,3}",
    ) {
        let text = format!("{scheme}://{bucket}/{prefix}");
        let url = StoreUrl::parse(&text).map_err(|e| TestCaseError::fail(e.message))?;
        let expected = Store::Bucket {
            scheme: match scheme.as_str() { "s3" => "s3", "gs" => "gs", _ => "az" },
            bucket: bucket.clone(),
            prefix: prefix.trim_matches('/').to_owned(),
        };
        prop_assert_eq!(url.store(), &expected);
        let again = StoreUrl::parse(&url.redacted()).map_err(|e| TestCaseError::fail(e.message))?;
        prop_assert_eq!(again.store(), &expected);
    }

    #[test]
    fn azblob_urls_round_trip_through_their_shown_form(
        account in "[a-z0-9]{3,24}",
        container in "[a-z0-9-]{3,20}",
        prefix in "([a-z0-9_-]{1,8}/){0,3}",
    ) {
        let text = format!("azblob://{account}/{container}/{prefix}?sig=Zq9secret");
        let url = StoreUrl::parse(&text).map_err(|e| TestCaseError::fail(e.message))?;
        let expected = Store::AzBlob {
            account: account.clone(),
            container: container.clone(),
            prefix: prefix.trim_matches('/').to_owned(),
        };
        prop_assert_eq!(url.store(), &expected);
        prop_assert!(!url.redacted().contains("Zq9secret"));
        let again = StoreUrl::parse(&url.redacted()).map_err(|e| TestCaseError::fail(e.message))?;
        prop_assert_eq!(again.store(), &expected);
    }
}
