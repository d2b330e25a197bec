//! Test helpers: a second, independent Azure client made of plain signed REST calls (its own
//! small Shared Key signer, written from the specification, not the crate's), and random names.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;

use azure_core::credentials::Secret;
use lease_azure::azure_core;

/// A random lowercase suffix for container and key names.
pub fn random_name() -> String {
    lease_azure::HolderToken::generate().to_string()[..12].to_owned()
}

/// Plain REST calls against an Azurite (or Azure) blob endpoint, signed with Shared Key.
pub struct Raw {
    endpoint: String,
    account: String,
    key: Secret,
    http: reqwest::Client,
}

impl Raw {
    /// `endpoint` includes the account (`http://127.0.0.1:10000/devstoreaccount1`).
    pub fn new(endpoint: &str, key: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let account = endpoint.rsplit('/').next().unwrap().to_owned();
        Self {
            endpoint,
            account,
            key: Secret::new(key.to_owned()),
            http: reqwest::Client::new(),
        }
    }

    /// Sends one signed request; `path` starts after the account, `query` is `(name, value)`s.
    async fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> reqwest::Response {
        let date = azure_core::time::to_rfc7231(&azure_core::time::OffsetDateTime::now_utc());
        let mut ms: Vec<(String, String)> = vec![
            ("x-ms-date".into(), date),
            ("x-ms-version".into(), "2021-08-06".into()),
        ];
        let mut plain: HashMap<&str, &str> = HashMap::new();
        for (name, value) in headers {
            if name.starts_with("x-ms-") {
                ms.push(((*name).into(), (*value).into()));
            } else {
                plain.insert(name, value);
            }
        }
        // The service's order, for the names this client sends: hyphens do not count, and `_`
        // sorts before digits and letters (a byte sort puts it after digits).
        let order_key = |name: &str| -> String {
            name.chars()
                .filter(|c| *c != '-')
                .map(|c| if c == '_' { '\u{1}' } else { c })
                .collect()
        };
        ms.sort_by_key(|(name, _)| order_key(name));
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let get = |n: &str| plain.get(n).copied().unwrap_or("");
        let mut to_sign = format!(
            "{method}\n\n\n{length}\n\n{}\n\n\n{}\n{}\n\n\n",
            get("content-type"),
            get("if-match"),
            get("if-none-match"),
        );
        for (name, value) in &ms {
            to_sign.push_str(&format!("{name}:{value}\n"));
        }
        to_sign.push_str(&format!("/{}/{}{path}", self.account, self.account));
        let mut sorted: Vec<_> = query.to_vec();
        sorted.sort();
        for (name, value) in &sorted {
            to_sign.push_str(&format!("\n{name}:{value}"));
        }
        let signature = azure_core::hmac::hmac_sha256(&to_sign, &self.key).unwrap();
        let query: Vec<String> = query.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let url = if query.is_empty() {
            format!("{}{path}", self.endpoint)
        } else {
            format!("{}{path}?{}", self.endpoint, query.join("&"))
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, url).header(
            "authorization",
            format!("SharedKey {}:{signature}", self.account),
        );
        for (name, value) in ms.iter() {
            request = request.header(name.as_str(), value.as_str());
        }
        for (name, value) in plain {
            request = request.header(name, value);
        }
        request.body(body.to_vec()).send().await.expect("REST call")
    }

    pub async fn container_status(&self, container: &str) -> u16 {
        self.send(
            "GET",
            &format!("/{container}"),
            &[("restype", "container")],
            &[],
            b"",
        )
        .await
        .status()
        .as_u16()
    }

    pub async fn create_container(&self, container: &str) {
        let status = self
            .send(
                "PUT",
                &format!("/{container}"),
                &[("restype", "container")],
                &[],
                b"",
            )
            .await
            .status()
            .as_u16();
        assert!(status == 201 || status == 409, "create container: {status}");
    }

    /// Puts a block blob with content and metadata (overwriting: this is the other client).
    pub async fn put_blob(&self, container: &str, name: &str, body: &[u8], meta: &[(&str, &str)]) {
        let meta: Vec<(String, &str)> = meta
            .iter()
            .map(|(k, v)| (format!("x-ms-meta-{k}"), *v))
            .collect();
        let mut headers: Vec<(&str, &str)> = vec![
            ("x-ms-blob-type", "BlockBlob"),
            ("content-type", "application/octet-stream"),
        ];
        headers.extend(meta.iter().map(|(k, v)| (k.as_str(), *v)));
        let status = self
            .send("PUT", &format!("/{container}/{name}"), &[], &headers, body)
            .await
            .status()
            .as_u16();
        assert_eq!(status, 201, "put blob");
    }

    /// Deletes a blob (as another client would); it must exist and not be leased.
    pub async fn delete_blob(&self, container: &str, name: &str) {
        let status = self
            .send("DELETE", &format!("/{container}/{name}"), &[], &[], b"")
            .await
            .status()
            .as_u16();
        assert_eq!(status, 202, "delete blob");
    }

    /// The blob's content and metadata (names lowercased).
    pub async fn get_blob(
        &self,
        container: &str,
        name: &str,
    ) -> (Vec<u8>, HashMap<String, String>) {
        let response = self
            .send("GET", &format!("/{container}/{name}"), &[], &[], b"")
            .await;
        assert_eq!(response.status().as_u16(), 200, "get blob");
        let meta = response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                let name = name.as_str().strip_prefix("x-ms-meta-")?;
                Some((name.to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        (response.bytes().await.unwrap().to_vec(), meta)
    }

    /// Acquires a 60 s lease with `proposed` (or a fixed id of this client); returns the status
    /// and the lease id.
    pub async fn acquire_lease(
        &self,
        container: &str,
        name: &str,
        proposed: Option<&str>,
    ) -> (u16, String) {
        let id = proposed.unwrap_or("0ddba11a-0000-4000-8000-00000000beef");
        let response = self
            .send(
                "PUT",
                &format!("/{container}/{name}"),
                &[("comp", "lease")],
                &[
                    ("x-ms-lease-action", "acquire"),
                    ("x-ms-lease-duration", "60"),
                    ("x-ms-proposed-lease-id", id),
                ],
                b"",
            )
            .await;
        (response.status().as_u16(), id.to_owned())
    }

    pub async fn release_lease(&self, container: &str, name: &str, id: &str) -> u16 {
        self.send(
            "PUT",
            &format!("/{container}/{name}"),
            &[("comp", "lease")],
            &[("x-ms-lease-action", "release"), ("x-ms-lease-id", id)],
            b"",
        )
        .await
        .status()
        .as_u16()
    }
}
