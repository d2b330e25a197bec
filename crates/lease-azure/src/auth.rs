//! Shared Key authorization: the account-key signature the official SDK leaves out, as a per-try
//! pipeline policy.
//!
//! The policy runs after the SDK's retry policy, so every try is signed again with a fresh
//! `x-ms-date` (Azure refuses requests whose date is more than 15 minutes off). The string to sign
//! follows the public "Authorize with Shared Key" specification for the Blob service (versions
//! 2015-02-21 and later, where a zero `Content-Length` is signed as the empty string).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use azure_core::credentials::Secret;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Method, Request, Url};
use azure_core::time::{OffsetDateTime, to_rfc7231};

/// A storage account key (base64), kept out of `Debug` output.
#[derive(Clone)]
pub(crate) struct AccountKey(Secret);

impl AccountKey {
    /// Checks that `key` is non-empty base64 and wraps it. The error never contains the key.
    pub(crate) fn new(key: &str) -> Result<Self, &'static str> {
        let key = key.trim();
        if key.is_empty() {
            return Err("is empty");
        }
        match azure_core::base64::decode(key) {
            Ok(bytes) if !bytes.is_empty() => Ok(Self(Secret::new(key.to_owned()))),
            _ => Err("is not valid base64"),
        }
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(..)")
    }
}

/// Signs every try of a request with the account key (`Authorization: SharedKey account:sig`).
#[derive(Clone)]
pub(crate) struct SharedKeyPolicy {
    account: String,
    key: AccountKey,
}

impl fmt::Debug for SharedKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKeyPolicy")
            .field("account", &self.account)
            .field("key", &self.key)
            .finish()
    }
}

impl SharedKeyPolicy {
    pub(crate) fn new(account: impl Into<String>, key: AccountKey) -> Self {
        Self {
            account: account.into(),
            key,
        }
    }

    /// The policy as the SDK's options want it.
    pub(crate) fn into_policy(self) -> Arc<dyn Policy> {
        Arc::new(self)
    }

    /// Sets `x-ms-date` to `now` and the `Authorization` header for the request as it is now.
    fn sign(&self, request: &mut Request, now: OffsetDateTime) -> azure_core::Result<()> {
        request.insert_header("x-ms-date", to_rfc7231(&now));
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_str().to_owned()))
            .collect();
        let body_len = request.body().len().unwrap_or(0);
        let to_sign = string_to_sign(
            &self.account,
            request.method(),
            request.url(),
            &headers,
            body_len,
        );
        let signature = azure_core::hmac::hmac_sha256(&to_sign, &self.key.0)?;
        request.insert_header(
            "authorization",
            format!("SharedKey {}:{signature}", self.account),
        );
        Ok(())
    }
}

// The trait is declared with an elided `Context` lifetime; spelling it out would not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        self.sign(request, OffsetDateTime::now_utc())?;
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// The Shared Key string to sign for the Blob service.
///
/// `headers` are the request's headers (any case); `body_len` is used for `Content-Length` when the
/// header is absent. The `Date` line stays empty because `x-ms-date` is always sent.
pub(crate) fn string_to_sign(
    account: &str,
    method: Method,
    url: &Url,
    headers: &[(String, String)],
    body_len: u64,
) -> String {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    };
    let content_length = match header("content-length") {
        "" if body_len > 0 => body_len.to_string(),
        "0" | "" => String::new(),
        other => other.to_owned(),
    };
    let mut out = String::with_capacity(256);
    for line in [
        method.as_ref(),
        header("content-encoding"),
        header("content-language"),
        &content_length,
        header("content-md5"),
        header("content-type"),
        "", // Date: x-ms-date is used instead
        header("if-modified-since"),
        header("if-match"),
        header("if-none-match"),
        header("if-unmodified-since"),
        header("range"),
    ] {
        out.push_str(line);
        out.push('\n');
    }
    // Canonicalized headers: every x-ms- header once, lowercase name, in the service's order
    // (`header_order`), value trimmed at both ends. Runs of spaces inside a value are kept: the
    // service (and Azurite) sign the value as it arrived, and an HTTP server strips only the
    // ends (the specification's "linear whitespace" is the obsolete CRLF line folding, which
    // no client sends).
    let mut ms_headers: Vec<(String, &str)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if name.starts_with("x-ms-") && !ms_headers.iter().any(|(n, _)| *n == name) {
            ms_headers.push((name, value.trim()));
        }
    }
    ms_headers.sort_by(|a, b| header_order(&a.0, &b.0));
    for (name, value) in &ms_headers {
        out.push_str(name);
        out.push(':');
        out.push_str(value);
        out.push('\n');
    }
    // Canonicalized resource: /account/path, then each query parameter (name lowercased,
    // decoded values sorted and comma-joined), sorted by name.
    out.push('/');
    out.push_str(account);
    out.push_str(url.path());
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in url.query_pairs() {
        params
            .entry(name.to_lowercase())
            .or_default()
            .push(value.into_owned());
    }
    for (name, mut values) in params {
        values.sort();
        out.push('\n');
        out.push_str(&name);
        out.push(':');
        out.push_str(&values.join(","));
    }
    out
}

/// How Azure Storage orders canonicalized header names: the .NET culture-aware comparison
/// (en-US) the service uses, which Azurite approximates with JavaScript's `localeCompare` and the
/// other Azure SDKs carry as a comparator. A plain byte order disagrees for names with `_`
/// (`i_` sorts before `i0`, `foo_bar` before `foo2_bar`), and a blob carrying such metadata
/// names would fail every signed request that re-sends them with a 403.
///
/// For the ASCII bytes of header names the comparison has two levels. First the names are
/// compared by primary weight, skipping `-` and `'` (which have none): the symbols in the order
/// `! # $ % & * . ^ _ ` | ~ +`, then the digits, then the letters (case-blind). Names equal at
/// that level are told apart by their `-` and `'`: at the first position where the two differ,
/// an ordinary byte sorts before the end of the name, which sorts before `'`, then `-` (so
/// `ab` < `a-b`).
pub(crate) fn header_order(a: &str, b: &str) -> Ordering {
    let primary = |name: &str| -> Vec<u32> {
        name.bytes()
            .map(primary_weight)
            .filter(|w| *w != 0)
            .collect()
    };
    primary(a).cmp(&primary(b)).then_with(|| {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        // 0: an ordinary byte; 1: past the end; then the bytes that only count here.
        let weight = |name: &[u8], at: usize| match name.get(at) {
            None => 1,
            Some(b'\'') => 2,
            Some(b'-') => 3,
            Some(_) => 0,
        };
        (0..a.len().max(b.len()))
            .map(|at| weight(a, at).cmp(&weight(b, at)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    })
}

/// A byte's primary weight in [`header_order`]; 0 for bytes skipped at that level.
fn primary_weight(byte: u8) -> u32 {
    const SYMBOLS: &[u8] = b"!#$%&*.^_`|~+";
    match byte {
        b'0'..=b'9' => 100 + u32::from(byte - b'0'),
        b'a'..=b'z' => 200 + u32::from(byte - b'a'),
        b'A'..=b'Z' => 200 + u32::from(byte - b'A'),
        // Not valid in a header name; kept distinct and after everything else.
        0x80.. => 300 + u32::from(byte),
        _ => SYMBOLS
            .iter()
            .position(|s| *s == byte)
            .map_or(0, |at| 1 + at as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Azurite's well-known development key (public, documented by Microsoft).
    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn lease_request() -> (Url, Vec<(String, String)>) {
        let url = Url::parse(
            "http://127.0.0.1:10000/devstoreaccount1/leases/jobs%2Fnightly?comp=lease&timeout=30",
        )
        .unwrap();
        let headers = vec![
            ("x-ms-version".into(), "2026-04-06".into()),
            ("x-ms-lease-action".into(), "acquire".into()),
            ("x-ms-lease-duration".into(), "15".into()),
            (
                "x-ms-proposed-lease-id".into(),
                "00112233-4455-6677-8899-aabbccddeeff".into(),
            ),
            ("x-ms-date".into(), "Mon, 23 Nov 2026 21:00:00 GMT".into()),
            ("If-Match".into(), "\"0x8DE2B\"".into()),
            ("content-length".into(), "0".into()),
            ("user-agent".into(), "not signed".into()),
        ];
        (url, headers)
    }

    /// The layout of the specification, written out by hand: twelve standard lines (a zero
    /// Content-Length and the Date are empty), the sorted x-ms- headers, then the resource with
    /// the sorted query parameters.
    const EXPECTED: &str = "PUT\n\n\n\n\n\n\n\n\"0x8DE2B\"\n\n\n\n\
x-ms-date:Mon, 23 Nov 2026 21:00:00 GMT\n\
x-ms-lease-action:acquire\n\
x-ms-lease-duration:15\n\
x-ms-proposed-lease-id:00112233-4455-6677-8899-aabbccddeeff\n\
x-ms-version:2026-04-06\n\
/devstoreaccount1/devstoreaccount1/leases/jobs%2Fnightly\ncomp:lease\ntimeout:30";

    #[test]
    fn string_to_sign_follows_the_specification() {
        let (url, headers) = lease_request();
        let got = string_to_sign("devstoreaccount1", Method::Put, &url, &headers, 0);
        assert_eq!(got, EXPECTED);
    }

    #[test]
    fn signature_matches_an_independent_hmac() {
        // Computed outside Rust, from the string above and the development key:
        // python3 -c 'import hmac,hashlib,base64,sys; k=base64.b64decode(KEY);
        //   print(base64.b64encode(hmac.new(k, STRING.encode(), hashlib.sha256).digest()).decode())'
        let sig = azure_core::hmac::hmac_sha256(EXPECTED, &Secret::new(DEV_KEY)).unwrap();
        assert_eq!(sig, "RWVSar/vi5THW8EJNSigxFrYNXANWyK5pvPcqOgVWOA=");
    }

    #[test]
    fn content_length_and_multi_valued_query() {
        let url = Url::parse("https://acct.blob.core.windows.net/c?restype=container&comp=list&include=metadata&include=copy&prefix=a%2Fb")
            .unwrap();
        let headers = vec![("Content-Type".into(), "application/xml".into())];
        let got = string_to_sign("acct", Method::Get, &url, &headers, 12);
        assert_eq!(
            got,
            "GET\n\n\n12\n\napplication/xml\n\n\n\n\n\n\n/acct/c\ncomp:list\ninclude:copy,metadata\nprefix:a/b\nrestype:container"
        );
    }

    #[test]
    fn policy_sets_a_fresh_date_and_the_authorization_header() {
        let policy = SharedKeyPolicy::new("devstoreaccount1", AccountKey::new(DEV_KEY).unwrap());
        let (url, _) = lease_request();
        let mut request = Request::new(url, Method::Put);
        let first = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        policy.sign(&mut request, first).unwrap();
        let auth1 = request
            .headers()
            .get_optional_string(&"authorization".into())
            .unwrap();
        assert!(auth1.starts_with("SharedKey devstoreaccount1:"), "{auth1}");
        // A retry is signed again with its own date, and the signature changes with it.
        policy
            .sign(&mut request, first + azure_core::time::Duration::seconds(5))
            .unwrap();
        let auth2 = request
            .headers()
            .get_optional_string(&"authorization".into())
            .unwrap();
        let date = request
            .headers()
            .get_optional_string(&"x-ms-date".into())
            .unwrap();
        assert_eq!(date, "Tue, 14 Nov 2023 22:13:25 GMT");
        assert_ne!(auth1, auth2);
    }

    /// Item 4 of issue 19: the names the service orders differently from bytes.
    #[test]
    fn headers_sort_as_the_service_sorts_them() {
        let sorted = |names: &[&str]| {
            let mut v: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            v.sort_by(|a, b| header_order(a, b));
            v
        };
        assert_eq!(
            sorted(&["x-ms-meta-i0", "x-ms-meta-i_"]),
            ["x-ms-meta-i_", "x-ms-meta-i0"]
        );
        assert_eq!(
            sorted(&["x-ms-meta-foo2_bar", "x-ms-meta-foo_bar"]),
            ["x-ms-meta-foo_bar", "x-ms-meta-foo2_bar"]
        );
        // `_` before digits before letters; case-blind; a shorter prefix first.
        assert_eq!(
            sorted(&[
                "x-ms-meta-a",
                "x-ms-meta-_",
                "x-ms-meta-9",
                "x-ms-meta-B",
                "x-ms-meta-ab"
            ]),
            [
                "x-ms-meta-_",
                "x-ms-meta-9",
                "x-ms-meta-a",
                "x-ms-meta-ab",
                "x-ms-meta-B"
            ]
        );
        // Hyphens count only between names otherwise equal: `ab` < `a-b`, and they do not split
        // the fixed headers differently from bytes.
        assert_eq!(
            header_order("x-ms-meta-ab", "x-ms-meta-a-b"),
            Ordering::Less
        );
        assert_eq!(
            sorted(&[
                "x-ms-version",
                "x-ms-meta-leasefencing",
                "x-ms-lease-id",
                "x-ms-date",
                "x-ms-if-tags"
            ]),
            [
                "x-ms-date",
                "x-ms-if-tags",
                "x-ms-lease-id",
                "x-ms-meta-leasefencing",
                "x-ms-version"
            ]
        );
        assert_eq!(header_order("x-ms-date", "x-ms-date"), Ordering::Equal);
    }

    #[test]
    fn canonical_headers_use_the_service_order_and_keep_inner_spaces() {
        let url = Url::parse("http://127.0.0.1:10000/devstoreaccount1/c/b?comp=metadata").unwrap();
        let headers = vec![
            ("x-ms-meta-i0".into(), "digit".into()),
            ("x-ms-meta-i_".into(), "  annual  report ".into()),
            ("x-ms-date".into(), "Mon, 23 Nov 2026 21:00:00 GMT".into()),
        ];
        let got = string_to_sign("devstoreaccount1", Method::Put, &url, &headers, 0);
        assert!(
            got.ends_with(
                "x-ms-date:Mon, 23 Nov 2026 21:00:00 GMT\n\
                 x-ms-meta-i_:annual  report\n\
                 x-ms-meta-i0:digit\n\
                 /devstoreaccount1/devstoreaccount1/c/b\ncomp:metadata"
            ),
            "{got}"
        );
    }

    #[test]
    fn keys_are_validated_and_never_printed() {
        assert!(AccountKey::new("").is_err());
        assert!(AccountKey::new("not base64 !!").is_err());
        let key = AccountKey::new(DEV_KEY).unwrap();
        let policy = SharedKeyPolicy::new("devstoreaccount1", key.clone());
        for shown in [format!("{key:?}"), format!("{policy:?}")] {
            assert!(!shown.contains("Eby8"), "{shown}");
        }
    }
}
