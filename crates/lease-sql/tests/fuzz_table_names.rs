//! Property tests of table-name validation: the one piece of SQL text a user controls. Arbitrary
//! input never panics; what is accepted is `identifier` or `schema.identifier` made only of ASCII
//! letters, digits and `_` (nothing that could close a quote or start a statement), and
//! round-trips through `as_str`.

use lease_sql::TableName;
use proptest::prelude::*;

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.]{0,70}",
        "[a-z_]{1,8}\\.[a-z_]{1,8}",
        "[a-z_\"'`;\\-\\- .\u{0}\u{ff}]{0,30}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn table_names_are_accepted_exactly_when_safe_and_round_trip(s in name_like()) {
        let parts: Vec<&str> = s.split('.').collect();
        let safe = matches!(parts.len(), 1 | 2) && parts.iter().all(|p| is_identifier(p));
        match TableName::new(&s) {
            Ok(name) => {
                prop_assert!(safe, "accepted {s:?}");
                prop_assert_eq!(name.as_str(), s.clone());
                prop_assert_eq!(name.to_string(), s.clone());
                prop_assert_eq!(name.table(), *parts.last().unwrap());
                prop_assert_eq!(name.schema(), (parts.len() == 2).then_some(parts[0]));
            }
            Err(e) => {
                prop_assert!(!safe, "refused {s:?}: {e}");
                prop_assert_eq!(e.field(), "table name");
            }
        }
    }
}
