//! `lease` on Azure Blob leases (`azblob://`), against the Azurite named by
//! `LEASE_TEST_AZURITE_BLOB_URL` (`cargo xtask test` sets it). Skipped when unset, unless
//! `LEASE_TEST_REQUIRE=1`.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::unique;

const USAGE: i32 = 64;

fn azurite() -> Option<(String, String)> {
    match std::env::var("LEASE_TEST_AZURITE_BLOB_URL") {
        Ok(url) if !url.is_empty() => {
            let key = std::env::var("LEASE_TEST_AZURITE_ACCOUNT_KEY")
                .ok()
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| lease_azure::AZURITE_ACCOUNT_KEY.to_owned());
            Some((url, key))
        }
        _ => {
            assert!(
                std::env::var("LEASE_TEST_REQUIRE").as_deref() != Ok("1"),
                "LEASE_TEST_AZURITE_BLOB_URL is not set and LEASE_TEST_REQUIRE=1"
            );
            eprintln!("SKIPPED: LEASE_TEST_AZURITE_BLOB_URL is not set");
            None
        }
    }
}

/// The binary with only the Azure variables this test means it to see.
fn lease(state: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lease"));
    for var in [
        "LEASE_STORE",
        "LEASE_LOG",
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "LEASE_AZURE_BLOB_ENDPOINT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("XDG_STATE_HOME", state.join("xdg"))
        .env("HOME", state.join("home"))
        .stdin(Stdio::null());
    cmd
}

/// The binary pointed at Azurite with its account key.
fn lease_on_azurite(state: &std::path::Path, endpoint: &str, key: &str) -> Command {
    let mut cmd = lease(state);
    cmd.env("AZURE_STORAGE_KEY", key)
        .env("LEASE_AZURE_BLOB_ENDPOINT", endpoint);
    cmd
}

#[test]
fn exec_runs_under_an_azure_blob_lease_with_rising_tokens() {
    let Some((endpoint, key)) = azurite() else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let store = "azblob://devstoreaccount1/lease-cli/tests";
    let name = unique("exec");
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let out = lease_on_azurite(state.path(), &endpoint, &key)
            .args(["exec", &name, "--store", store, "--", "sh", "-c"])
            .arg("echo \"$LEASE_NAME $LEASE_FENCING_TOKEN\"")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains(&key), "the key leaked: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (printed_name, token) = stdout.trim().split_once(' ').unwrap();
        assert_eq!(printed_name, name);
        tokens.push(token.parse::<u64>().unwrap());
    }
    assert!(tokens[1] > tokens[0], "{tokens:?}");

    // The same store through a connection string, with the endpoint in the URL.
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint={endpoint};"
    );
    let out = lease(state.path())
        .env("AZURE_STORAGE_CONNECTION_STRING", cs)
        .args(["exec", &name, "--store", store, "--", "sh", "-c"])
        .arg("echo $LEASE_FENCING_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(third > tokens[1]);
}

/// Azure's shortest lease is 15 s, so this test takes about half a minute.
#[test]
fn sigkill_of_lease_kills_the_command_group_on_azure() {
    let Some((endpoint, key)) = azurite() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    support::sigkill_of_lease_kills_the_command_group(
        || lease_on_azurite(dir.path(), &endpoint, &key),
        "azblob://devstoreaccount1/lease-cli/tests",
        dir.path(),
        Duration::from_secs(15),
    );
}

#[test]
fn list_on_azure() {
    let Some((endpoint, key)) = azurite() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    support::list_shows_leases_under_a_prefix(
        || lease_on_azurite(dir.path(), &endpoint, &key),
        "azblob://devstoreaccount1/lease-cli/tests",
        dir.path(),
        false,
    );
}

#[test]
fn azure_store_errors_are_typed_and_keep_keys_secret() {
    let state = tempfile::tempdir().unwrap();
    // No credentials at all: a usage error naming what is missing.
    let out = lease(state.path())
        .args([
            "exec",
            "k",
            "--store",
            "azblob://acct/c0ntainer",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(USAGE));
    assert!(String::from_utf8_lossy(&out.stderr).contains("credentials"));

    let Some((endpoint, _)) = azurite() else {
        return;
    };
    // A wrong key: refused by the server, reported without the key.
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
    let out = lease(state.path())
        .env("AZURE_STORAGE_KEY", wrong)
        .args(["exec", "k", "--store"])
        .arg(format!(
            "azblob://devstoreaccount1/lease-cli?endpoint={endpoint}"
        ))
        .args(["--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("403"), "{stderr}");
    assert!(!stderr.contains(wrong), "the key leaked: {stderr}");
}
