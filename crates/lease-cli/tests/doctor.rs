//! `lease doctor --store URL`: the verdict against a good PostgreSQL, a stopped server, a wrong
//! password (MariaDB's root with a password it does not have), moto with a bucket, a missing
//! bucket (found by a listing: a read in a missing bucket is only "not found"), and an S3 endpoint that ignores `If-None-Match`/`If-Match` (a fake in this file).
//! Servers come from `LEASE_TEST_POSTGRES_URL`, `LEASE_TEST_MYSQL_URL` and
//! `LEASE_TEST_S3_ENDPOINT`; each test skips without its server unless `LEASE_TEST_REQUIRE=1`.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const UNAVAILABLE: i32 = 69;

/// The fake store's objects: path → (version, body).
type Objects = Mutex<HashMap<String, (u64, Vec<u8>)>>;
const CONFIG: i32 = 78;

fn server(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("LEASE_TEST_REQUIRE").as_deref() != Ok("1"),
                "{var} is not set and LEASE_TEST_REQUIRE=1"
            );
            eprintln!("SKIPPED: {var} is not set");
            None
        }
    }
}

/// `lease doctor --store URL`, with S3 settings as a user sets them for a plain-HTTP endpoint.
fn doctor(store: &str, s3_endpoint: Option<&str>) -> (Output, String) {
    let state = tempfile::tempdir().unwrap();
    let mut cmd: Command = support::lease(state.path());
    for (var, _) in std::env::vars() {
        if var.starts_with("AWS_") {
            cmd.env_remove(var);
        }
    }
    if let Some(endpoint) = s3_endpoint {
        cmd.env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "secret-that-must-not-leak")
            .env("AWS_REGION", "us-east-1");
    }
    let out = support::run(cmd.args(["doctor", "--timeout", "20s", "--store", store]));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!report.contains("secret-that-must-not-leak"));
    (out, report)
}

fn line<'a>(report: &'a str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(check)))
        .unwrap_or_else(|| panic!("no `{check}` line in:\n{report}"))
}

/// Whether a fencing line reads "… token NEXT > FIRST" with NEXT = FIRST + 1 (a new key's first
/// token is the clock in µs, not 1: docs/protocol.md).
fn the_next_token_is_one_more(line: &str) -> bool {
    let Some((_, tokens)) = line.rsplit_once("token ") else {
        return false;
    };
    let mut numbers = tokens.split(" > ").map(|n| n.trim().parse::<u64>());
    matches!(
        (numbers.next(), numbers.next()),
        (Some(Ok(next)), Some(Ok(first))) if next == first + 1
    )
}

#[test]
fn a_good_postgres_is_fit_for_leases() {
    let Some(url) = server("LEASE_TEST_POSTGRES_URL") else {
        return;
    };
    let (out, report) = doctor(&url, None);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(line(&report, "connect").starts_with("ok "));
    assert!(
        the_next_token_is_one_more(line(&report, "exclusion, fencing")),
        "{report}"
    );
    assert!(line(&report, "clock").contains("store's clock"));
    assert!(
        report.ends_with("the store is fit for leases\n"),
        "{report}"
    );
}

/// Through PgBouncer in transaction mode, `?pooler=transaction` makes the store usable: the lease
/// statements run without session state.
#[test]
fn postgres_behind_pgbouncer_with_pooler_transaction_is_fit_for_leases() {
    let Some(url) = server("LEASE_TEST_PGBOUNCER_URL") else {
        return;
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let (out, report) = doctor(&format!("{url}{separator}pooler=transaction"), None);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        the_next_token_is_one_more(line(&report, "exclusion, fencing")),
        "{report}"
    );
    assert!(line(&report, "wake-ups").contains("poll"), "{report}");
}

#[test]
fn a_stopped_server_fails_to_connect() {
    // A port nobody listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (out, report) = doctor(&format!("postgres://postgres@127.0.0.1:{port}/db"), None);
    assert_eq!(out.status.code(), Some(UNAVAILABLE), "{report}");
    assert!(line(&report, "connect").starts_with("FAIL "), "{report}");
    assert!(report.contains("NOT fit for leases"));
    // Nothing after a failed connect is claimed.
    assert!(!report.contains("exclusion"));
}

#[test]
fn a_wrong_password_fails_to_log_in() {
    let Some(url) = server("LEASE_TEST_MYSQL_URL") else {
        return;
    };
    // The rig's MariaDB root has no password: any password is wrong.
    let wrong = url.replacen("://root@", "://root:not-the-password@", 1);
    assert_ne!(wrong, url, "expected a root URL without a password: {url}");
    let (out, report) = doctor(&wrong, None);
    assert_eq!(out.status.code(), Some(CONFIG), "{report}");
    let connect = line(&report, "connect");
    assert!(
        connect.starts_with("FAIL ") && connect.contains("Access denied"),
        "{report}"
    );
    assert!(!report.contains("not-the-password"), "{report}");
}

/// Creates a bucket with one plain HTTP request (moto creates buckets on an unsigned PUT).
fn create_bucket(endpoint: &str, bucket: &str) {
    let authority = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(authority).unwrap();
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "create bucket: {response}"
    );
}

#[test]
fn moto_with_a_bucket_is_fit_for_leases() {
    let Some(endpoint) = server("LEASE_TEST_S3_ENDPOINT") else {
        return;
    };
    let bucket = support::unique("doctor").to_ascii_lowercase();
    create_bucket(&endpoint, &bucket);
    let (out, report) = doctor(&format!("s3://{bucket}/leases"), Some(&endpoint));
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        line(&report, "conditional writes").starts_with("ok "),
        "{report}"
    );
    assert!(
        line(&report, "exclusion, fencing").starts_with("ok "),
        "{report}"
    );
    assert!(
        line(&report, "clock").contains("observed expiry"),
        "{report}"
    );
}

#[test]
fn a_missing_bucket_fails_the_first_read() {
    let Some(endpoint) = server("LEASE_TEST_S3_ENDPOINT") else {
        return;
    };
    let bucket = support::unique("no-such").to_ascii_lowercase();
    let (out, report) = doctor(&format!("s3://{bucket}/leases"), Some(&endpoint));
    assert_ne!(out.status.code(), Some(0), "{report}");
    let check = line(&report, "bucket");
    assert!(
        check.starts_with("FAIL ") && check.contains("NoSuchBucket"),
        "{report}"
    );
    assert!(!report.contains("exclusion"), "{report}");
}

/// A minimal S3 that stores objects and answers reads but ignores every precondition header,
/// as some S3-compatible stores do.
fn start_unconditional_s3() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let objects: Arc<Objects> = Arc::default();
    std::thread::spawn(move || {
        let mut version = 0u64;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            version += 1;
            let _ = serve_one(stream, &objects, version);
        }
    });
    format!("http://127.0.0.1:{port}")
}

fn serve_one(stream: TcpStream, objects: &Objects, version: u64) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("").to_owned();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut objects = objects.lock().unwrap();
    let (status, etag, payload): (&str, Option<u64>, Vec<u8>) = match method {
        // Stored whatever If-None-Match or If-Match say.
        "PUT" => {
            objects.insert(path, (version, body));
            ("200 OK", Some(version), Vec::new())
        }
        "GET" | "HEAD" if target.contains("list-type=2") => (
            "200 OK",
            None,
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>".to_vec(),
        ),
        "GET" | "HEAD" => match objects.get(&path) {
            Some((v, data)) => ("200 OK", Some(*v), data.clone()),
            None => (
                "404 Not Found",
                None,
                b"<Error><Code>NoSuchKey</Code></Error>".to_vec(),
            ),
        },
        "DELETE" => {
            objects.remove(&path);
            ("204 No Content", None, Vec::new())
        }
        _ => ("400 Bad Request", None, Vec::new()),
    };
    let mut out = stream;
    write!(out, "HTTP/1.1 {status}\r\nConnection: close\r\n")?;
    if let Some(v) = etag {
        write!(
            out,
            "ETag: \"{v}\"\r\nLast-Modified: Fri, 04 Dec 2026 10:00:00 GMT\r\n"
        )?;
    }
    write!(out, "Content-Length: {}\r\n\r\n", payload.len())?;
    if method != "HEAD" {
        out.write_all(&payload)?;
    }
    out.flush()
}

#[test]
fn an_s3_that_ignores_conditions_is_caught() {
    let endpoint = start_unconditional_s3();
    let (out, report) = doctor("s3://careless/leases", Some(&endpoint));
    assert_eq!(out.status.code(), Some(CONFIG), "{report}");
    let check = line(&report, "conditional writes");
    assert!(
        check.starts_with("FAIL ") && check.contains("UNSAFE"),
        "{report}"
    );
    assert!(report.contains("NOT fit for leases"));
}
