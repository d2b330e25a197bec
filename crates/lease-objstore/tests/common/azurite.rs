//! Creating an Azurite container, for the object-store Azure tests and the bench (object_store
//! creates no containers, and Azurite checks Shared Key signatures).

use base64::Engine as _;
use hmac::{KeyInit, Mac};

/// Creates `container` with one Shared Key signed request (object_store does not create
/// containers, and Azurite checks signatures).
pub(crate) async fn create_container(account: &str, endpoint: &str, key: &str, container: &str) {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let version = "2021-08-06";
    let path = format!("/{account}/{container}");
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{account}{path}\nrestype:container"
    );
    let secret = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let base = endpoint
        .trim_end_matches('/')
        .trim_end_matches(account)
        .trim_end_matches('/');
    let response = reqwest::Client::new()
        .put(format!("{base}{path}?restype=container"))
        .header("x-ms-date", date)
        .header("x-ms-version", version)
        .header("content-length", "0")
        .header("authorization", format!("SharedKey {account}:{signature}"))
        .send()
        .await
        .expect("Azurite answers");
    assert!(
        response.status().is_success(),
        "create container: {}",
        response.status()
    );
}
