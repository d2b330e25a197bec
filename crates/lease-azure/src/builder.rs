//! From URLs, connection strings, environment variables and typed settings to an
//! [`AzureBlobBackend`]. Every problem is an [`InvalidInput`] naming the setting, found before any
//! request is sent; secrets never appear in errors or `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::policies::Policy;
use azure_core::http::{ClientOptions, RetryOptions, Transport, Url};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use lease_core::{InvalidInput, LeaseKey};

use crate::auth::{AccountKey, SharedKeyPolicy};
use crate::backend::{AuthKind, AzureBlobBackend};

/// Azurite's account name (public, the same in every installation).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's account key: Microsoft's published development key, not a secret.
pub const AZURITE_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Azurite's default blob endpoint (path-style: the account is the first path segment).
pub const AZURITE_BLOB_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// Environment variable: a full connection string (as the Azure CLI reads it).
pub const ENV_CONNECTION_STRING: &str = "AZURE_STORAGE_CONNECTION_STRING";
/// Environment variable: the storage account name.
pub const ENV_ACCOUNT: &str = "AZURE_STORAGE_ACCOUNT";
/// Environment variable: the storage account key.
pub const ENV_KEY: &str = "AZURE_STORAGE_KEY";
/// Environment variable: a SAS token (with or without the leading `?`).
pub const ENV_SAS_TOKEN: &str = "AZURE_STORAGE_SAS_TOKEN";
/// Environment variable: the blob endpoint, overriding `https://ACCOUNT.blob.core.windows.net`
/// (for Azurite: `http://127.0.0.1:10000/devstoreaccount1`).
pub const ENV_BLOB_ENDPOINT: &str = "LEASE_AZURE_BLOB_ENDPOINT";

/// Settings for an [`AzureBlobBackend`].
///
/// ```
/// use lease_azure::AzureBlobBuilder;
/// // Azure Storage with an account key; keys name blobs `leases/<key>` in container `locks`.
/// let backend = AzureBlobBuilder::new()
///     .with_url("azblob://myaccount/locks/leases")?
///     .with_access_key("c2VjcmV0LWtleQ==")
///     .build()?;
/// assert_eq!(backend.blob_name(&"nightly".parse()?), "leases/nightly");
/// assert!(!format!("{backend:?}").contains("c2VjcmV0"));
/// # Ok::<(), lease_azure::InvalidInput>(())
/// ```
#[derive(Clone, Default)]
pub struct AzureBlobBuilder {
    account: Option<String>,
    endpoint: Option<String>,
    container: Option<String>,
    prefix: String,
    key: Option<String>,
    sas: Option<String>,
    credential: Option<Arc<dyn TokenCredential>>,
    api_version: Option<String>,
    connect_timeout: Option<Duration>,
    extra_policies: Vec<Arc<dyn Policy>>,
}

impl fmt::Debug for AzureBlobBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobBuilder")
            .field("account", &self.account)
            .field("endpoint", &self.endpoint)
            .field("container", &self.container)
            .field("prefix", &self.prefix)
            .field("key", &self.key.as_ref().map(|_| ".."))
            .field("sas", &self.sas.as_ref().map(|_| ".."))
            .field("credential", &self.credential.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

impl AzureBlobBuilder {
    /// Empty settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Settings from the environment, as the Azure CLI reads them: [`ENV_CONNECTION_STRING`]
    /// (`AZURE_STORAGE_CONNECTION_STRING`), or [`ENV_ACCOUNT`] with [`ENV_KEY`] or
    /// [`ENV_SAS_TOKEN`]; plus [`ENV_BLOB_ENDPOINT`] (`LEASE_AZURE_BLOB_ENDPOINT`) to point at
    /// Azurite or another endpoint.
    ///
    /// # Errors
    /// An [`InvalidInput`] when the connection string cannot be parsed.
    pub fn from_env() -> Result<Self, InvalidInput> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut builder = match var(ENV_CONNECTION_STRING) {
            Some(cs) => Self::new().with_connection_string(&cs)?,
            None => Self::new(),
        };
        if let Some(account) = var(ENV_ACCOUNT) {
            builder.account.get_or_insert(account);
        }
        if builder.key.is_none() && builder.sas.is_none() {
            builder.key = var(ENV_KEY);
            if builder.key.is_none() {
                builder.sas = var(ENV_SAS_TOKEN);
            }
        }
        if let Some(endpoint) = var(ENV_BLOB_ENDPOINT) {
            builder.endpoint = Some(endpoint);
        }
        Ok(builder)
    }

    /// Reads the account, container and optional key prefix from a URL:
    ///
    /// - `azblob://ACCOUNT/CONTAINER[/PREFIX]`
    /// - `https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX][?SAS]`
    /// - `http://127.0.0.1:10000/ACCOUNT/CONTAINER[/PREFIX]` (path-style, as Azurite serves)
    ///
    /// An endpoint set before is kept for `azblob://` URLs, unless the URL has an `endpoint=`
    /// query parameter (`azblob://devstoreaccount1/locks?endpoint=http://127.0.0.1:10000/devstoreaccount1`).
    /// Other query parameters are taken as a SAS token.
    ///
    /// # Errors
    /// An [`InvalidInput`] (field `azure url`) for anything else.
    pub fn with_url(mut self, url: &str) -> Result<Self, InvalidInput> {
        let bad = |reason: &str| InvalidInput::new("azure url", reason.to_owned());
        let parsed = Url::parse(url).map_err(|_| {
            bad("expected azblob://ACCOUNT/CONTAINER[/PREFIX] or an https:// blob URL")
        })?;
        let host = parsed.host_str().unwrap_or("").to_owned();
        let segments: Vec<String> = parsed
            .path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        let (account, rest) = match parsed.scheme() {
            "azblob" => (host, &segments[..]),
            "https" | "http" => {
                let path_style = parsed.host().is_some_and(|h| {
                    matches!(h, url::Host::Ipv4(_) | url::Host::Ipv6(_)) || host == "localhost"
                });
                if path_style {
                    let Some((account, rest)) = segments.split_first() else {
                        return Err(bad("a path-style URL needs /ACCOUNT/CONTAINER"));
                    };
                    let mut endpoint = parsed.clone();
                    endpoint.set_query(None);
                    endpoint.set_path(account);
                    self.endpoint = Some(endpoint.to_string());
                    (account.clone(), rest)
                } else {
                    let account = host.split('.').next().unwrap_or("").to_owned();
                    let mut endpoint = parsed.clone();
                    endpoint.set_query(None);
                    endpoint.set_path("");
                    self.endpoint = Some(endpoint.to_string());
                    (account, &segments[..])
                }
            }
            _ => {
                return Err(bad(
                    "the scheme must be azblob, https or http (http only for a local emulator)",
                ));
            }
        };
        let Some((container, prefix)) = rest.split_first() else {
            return Err(bad("the URL names no container"));
        };
        // The query is a SAS token; on azblob:// URLs `endpoint=` may point at Azurite instead.
        let mut sas_pairs = Vec::new();
        for pair in parsed
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("endpoint", value)) if parsed.scheme() == "azblob" => {
                    let endpoint = url::form_urlencoded::parse(format!("e={value}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    self.endpoint = Some(endpoint);
                }
                _ => sas_pairs.push(pair),
            }
        }
        if !sas_pairs.is_empty() {
            self.sas = Some(sas_pairs.join("&"));
        }
        self.account = Some(account);
        self.container = Some(container.clone());
        self.prefix = prefix.join("/");
        Ok(self)
    }

    /// Reads an Azure Storage connection string: `AccountName`, `AccountKey`, `BlobEndpoint`,
    /// `DefaultEndpointsProtocol`, `EndpointSuffix`, `SharedAccessSignature`, or
    /// `UseDevelopmentStorage=true` (Azurite on 127.0.0.1:10000).
    ///
    /// # Errors
    /// An [`InvalidInput`] (field `connection string`) for malformed text; the message names the
    /// part, never its value.
    pub fn with_connection_string(mut self, connection_string: &str) -> Result<Self, InvalidInput> {
        let bad = |reason: String| InvalidInput::new("connection string", reason);
        let mut parts: HashMap<String, String> = HashMap::new();
        for part in connection_string
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let Some((name, value)) = part.split_once('=') else {
                return Err(bad("every part must be Name=Value".into()));
            };
            parts.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        if parts
            .get("usedevelopmentstorage")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            self.account = Some(AZURITE_ACCOUNT.into());
            self.key = Some(AZURITE_ACCOUNT_KEY.into());
            self.endpoint = Some(AZURITE_BLOB_ENDPOINT.into());
            return Ok(self);
        }
        let known = [
            "accountname",
            "accountkey",
            "blobendpoint",
            "defaultendpointsprotocol",
            "endpointsuffix",
            "sharedaccesssignature",
            "queueendpoint",
            "tableendpoint",
            "fileendpoint",
        ];
        if let Some(unknown) = parts.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(bad(format!("unknown part {unknown:?}")));
        }
        let account = parts.get("accountname").cloned();
        if let Some(endpoint) = parts.get("blobendpoint") {
            self.endpoint = Some(endpoint.clone());
        } else if let Some(account) = &account {
            let protocol = parts
                .get("defaultendpointsprotocol")
                .map_or("https", String::as_str);
            let suffix = parts
                .get("endpointsuffix")
                .map_or("core.windows.net", String::as_str);
            self.endpoint = Some(format!("{protocol}://{account}.blob.{suffix}"));
        } else {
            return Err(bad("needs AccountName or BlobEndpoint".into()));
        }
        self.account = account.or(self.account);
        self.key = parts.get("accountkey").cloned();
        self.sas = parts.get("sharedaccesssignature").cloned();
        Ok(self)
    }

    /// The storage account name.
    pub fn with_account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }

    /// The blob endpoint: `https://ACCOUNT.blob.core.windows.net` by default; for Azurite
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The container holding the lease blobs (created on first use when missing).
    pub fn with_container(mut self, container: impl Into<String>) -> Self {
        self.container = Some(container.into());
        self
    }

    /// A prefix for every lease blob's name (a `/` is added when missing).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Authenticates with the account key (Shared Key signing of every request).
    pub fn with_access_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Authenticates with a SAS token (the query string, with or without `?`). It needs read,
    /// write and create permissions on the container's blobs (and create on the container, unless
    /// it exists).
    pub fn with_sas_token(mut self, sas: impl Into<String>) -> Self {
        self.sas = Some(sas.into());
        self
    }

    /// Authenticates with Entra ID: any `azure_core` token credential, such as those of the
    /// `azure_identity` crate (`ManagedIdentityCredential`, `DeveloperToolsCredential`, …). The SDK
    /// sends tokens to `https://` endpoints only.
    pub fn with_token_credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// The storage REST API version to send (`x-ms-version`); the SDK's default when unset. An
    /// older Azurite may need an older version (or `--skipApiVersionCheck`).
    pub fn with_api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = Some(version.into());
        self
    }

    /// How long connecting may take (default 10 s). Whole calls are bounded by the locker.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Adds a pipeline policy run on every try of every request, after signing (for metrics or
    /// tracing of your own; it must not change what was signed).
    pub fn with_per_try_policy(mut self, policy: Arc<dyn Policy>) -> Self {
        self.extra_policies.push(policy);
        self
    }

    /// Validates the settings and builds the backend. Sends no request.
    ///
    /// # Errors
    /// An [`InvalidInput`] naming the setting that is missing or malformed.
    pub fn build(self) -> Result<AzureBlobBackend, InvalidInput> {
        let account = self
            .account
            .ok_or_else(|| InvalidInput::new("account name", "is not set"))?;
        check_account(&account)?;
        let container = self
            .container
            .ok_or_else(|| InvalidInput::new("container name", "is not set"))?;
        check_container(&container)?;
        let prefix = normalize_prefix(&self.prefix)?;
        let endpoint = self
            .endpoint
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let mut url =
            Url::parse(&endpoint).map_err(|_| InvalidInput::new("endpoint", "is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(InvalidInput::new(
                "endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        if url.query().is_some() {
            return Err(InvalidInput::new(
                "endpoint",
                "must not carry a query; pass a SAS token separately",
            ));
        }
        url.path_segments_mut()
            .map_err(|()| InvalidInput::new("endpoint", "must be an http:// or https:// URL"))?
            .pop_if_empty()
            .push(&container);

        let mut client_options = ClientOptions {
            // The lease protocol retries (and resolves unknown outcomes) itself: a retried
            // conditional write that landed the first time must not look like a lost race.
            retry: RetryOptions::none(),
            transport: Some(Transport::new(Arc::new(http_client(
                self.connect_timeout.unwrap_or(Duration::from_secs(10)),
            )?))),
            ..Default::default()
        };
        let (auth, credential) = if let Some(credential) = self.credential {
            if url.scheme() != "https" {
                return Err(InvalidInput::new(
                    "credential",
                    "Entra ID tokens are only sent to https:// endpoints",
                ));
            }
            (AuthKind::TokenCredential, Some(credential))
        } else if let Some(key) = self.key {
            let key =
                AccountKey::new(&key).map_err(|reason| InvalidInput::new("account key", reason))?;
            client_options
                .per_try_policies
                .push(SharedKeyPolicy::new(account.clone(), key).into_policy());
            (AuthKind::SharedKey, None)
        } else if let Some(sas) = self.sas {
            let sas = sas.trim().trim_start_matches('?');
            if sas.is_empty() || !sas.contains("sig=") {
                return Err(InvalidInput::new(
                    "sas token",
                    "must be a SAS query string with a signature (sig=…)",
                ));
            }
            url.set_query(Some(sas));
            (AuthKind::Sas, None)
        } else {
            return Err(InvalidInput::new(
                "credentials",
                "none set: give an account key, a SAS token, a connection string or a token credential",
            ));
        };
        client_options.per_try_policies.extend(self.extra_policies);
        let mut options = BlobContainerClientOptions {
            client_options,
            ..Default::default()
        };
        if let Some(version) = self.api_version {
            options.version = version;
        }
        let client = BlobContainerClient::new(url, credential, Some(options))
            .map_err(|e| InvalidInput::new("endpoint", crate::error::redact(&e.to_string())))?;
        Ok(AzureBlobBackend {
            container: client,
            account,
            container_name: container,
            prefix,
            auth,
            granted: Mutex::default(),
        })
    }
}

/// The HTTP client: rustls on the `ring` provider with the platform's roots. No automatic
/// decompression (the SDK's own default, as blob bodies are stored compressed or not).
fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, InvalidInput> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let tls_error = |e: rustls::Error| InvalidInput::new("tls", e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_platform_verifier()
        .map_err(tls_error)?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect_timeout)
        .build()
        .map_err(|e| InvalidInput::new("http client", e.to_string()))
}

/// Storage account names: 3 to 24 lowercase letters and digits.
fn check_account(account: &str) -> Result<(), InvalidInput> {
    let ok = (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(
            "account name",
            format!("{account:?} is not 3 to 24 lowercase letters and digits"),
        ))
    }
}

/// Container names: 3 to 63 lowercase letters, digits and single hyphens, starting and ending
/// with a letter or digit.
fn check_container(container: &str) -> Result<(), InvalidInput> {
    let bytes = container.as_bytes();
    let ok = (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && !container.contains("--");
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(
            "container name",
            format!(
                "{container:?} must be 3 to 63 lowercase letters, digits and single hyphens, \
                 starting and ending with a letter or digit"
            ),
        ))
    }
}

/// The blob-name prefix: key characters only, ending with `/` when not empty.
fn normalize_prefix(prefix: &str) -> Result<String, InvalidInput> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(String::new());
    }
    let with_slash = format!("{prefix}/");
    LeaseKey::check_prefix(&with_slash)
        .map_err(|e| InvalidInput::new("prefix", e.reason().to_owned()))?;
    if with_slash.starts_with('.') || with_slash.contains("..") || with_slash.contains("//") {
        return Err(InvalidInput::new(
            "prefix",
            "must not start with '.' or contain '..' or '//'",
        ));
    }
    Ok(with_slash)
}

impl AzureBlobBackend {
    /// Azurite on its default endpoint (`http://127.0.0.1:10000/devstoreaccount1`) with the
    /// published development account and key.
    ///
    /// # Errors
    /// An [`InvalidInput`] for a malformed container name.
    pub fn azurite(container: &str) -> Result<Self, InvalidInput> {
        Self::azurite_at(AZURITE_BLOB_ENDPOINT, container)
    }

    /// Azurite at `endpoint` (including the account: `http://HOST:PORT/devstoreaccount1`) with the
    /// development account and key.
    ///
    /// # Errors
    /// An [`InvalidInput`] for a malformed endpoint or container name.
    pub fn azurite_at(endpoint: &str, container: &str) -> Result<Self, InvalidInput> {
        AzureBlobBuilder::new()
            .with_account(AZURITE_ACCOUNT)
            .with_access_key(AZURITE_ACCOUNT_KEY)
            .with_endpoint(endpoint)
            .with_container(container)
            .build()
    }

    /// A backend from `azblob://ACCOUNT/CONTAINER[/PREFIX]` (or an https:// blob URL), with
    /// credentials from the environment as [`AzureBlobBuilder::from_env`] reads them.
    ///
    /// # Errors
    /// An [`InvalidInput`] naming what is missing or malformed.
    pub fn from_url(url: &str) -> Result<Self, InvalidInput> {
        AzureBlobBuilder::from_env()?.with_url(url)?.build()
    }

    /// A backend from a connection string and a container.
    ///
    /// # Errors
    /// An [`InvalidInput`] naming what is missing or malformed.
    pub fn from_connection_string(
        connection_string: &str,
        container: &str,
    ) -> Result<Self, InvalidInput> {
        AzureBlobBuilder::new()
            .with_connection_string(connection_string)?
            .with_container(container)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azblob_urls() {
        let b = AzureBlobBuilder::new()
            .with_url("azblob://acct/locks/team/a")
            .unwrap()
            .with_access_key(AZURITE_ACCOUNT_KEY)
            .build()
            .unwrap();
        assert_eq!(b.account(), "acct");
        assert_eq!(b.container_name(), "locks");
        assert_eq!(b.prefix(), "team/a/");
        let plain = AzureBlobBuilder::new()
            .with_url("azblob://acct/locks")
            .unwrap()
            .with_access_key(AZURITE_ACCOUNT_KEY)
            .build()
            .unwrap();
        assert_eq!(plain.prefix(), "");
        let local = AzureBlobBuilder::new()
            .with_url(
                "azblob://devstoreaccount1/locks?endpoint=http://127.0.0.1:10000/devstoreaccount1",
            )
            .unwrap()
            .with_access_key(AZURITE_ACCOUNT_KEY)
            .build()
            .unwrap();
        assert!(
            local
                .container
                .url()
                .as_str()
                .starts_with("http://127.0.0.1:10000/devstoreaccount1/locks")
        );
    }

    #[test]
    fn https_and_path_style_urls() {
        let b = AzureBlobBuilder::new()
            .with_url("https://acct.blob.core.windows.net/locks?sv=2024-01-01&sig=SECRETSIG")
            .unwrap()
            .build()
            .unwrap();
        assert_eq!((b.account(), b.container_name()), ("acct", "locks"));
        let shown = format!("{b:?}");
        assert!(!shown.contains("SECRETSIG"), "{shown}");
        assert!(shown.contains("Sas"), "{shown}");
        let local = AzureBlobBuilder::new()
            .with_url("http://127.0.0.1:10000/devstoreaccount1/locks/p")
            .unwrap()
            .with_access_key(AZURITE_ACCOUNT_KEY)
            .build()
            .unwrap();
        assert_eq!(local.account(), "devstoreaccount1");
        assert_eq!(local.prefix(), "p/");
        assert!(
            local
                .container
                .url()
                .as_str()
                .starts_with("http://127.0.0.1:10000/devstoreaccount1/locks")
        );
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        let key = AZURITE_ACCOUNT_KEY;
        let cases: Vec<(Result<AzureBlobBackend, InvalidInput>, &str)> = vec![
            (
                AzureBlobBuilder::new()
                    .with_url("s3://a/b")
                    .map(|_| unreachable!()),
                "azure url",
            ),
            (
                AzureBlobBuilder::new()
                    .with_url("azblob://acct")
                    .map(|_| unreachable!()),
                "azure url",
            ),
            (
                AzureBlobBuilder::new()
                    .with_container("locks")
                    .with_access_key(key)
                    .build(),
                "account name",
            ),
            (
                AzureBlobBuilder::new()
                    .with_account("Bad_Name")
                    .with_container("locks")
                    .with_access_key(key)
                    .build(),
                "account name",
            ),
            (
                AzureBlobBuilder::new()
                    .with_account("acct")
                    .with_container("UPPER")
                    .with_access_key(key)
                    .build(),
                "container name",
            ),
            (
                AzureBlobBuilder::new()
                    .with_account("acct")
                    .with_container("a--b")
                    .with_access_key(key)
                    .build(),
                "container name",
            ),
            (
                AzureBlobBuilder::new()
                    .with_account("acct")
                    .with_container("locks")
                    .build(),
                "credentials",
            ),
            (
                AzureBlobBuilder::new()
                    .with_account("acct")
                    .with_container("locks")
                    .with_access_key("%%%")
                    .build(),
                "account key",
            ),
            (
                AzureBlobBuilder::new()
                    .with_account("acct")
                    .with_container("locks")
                    .with_sas_token("sv=1")
                    .build(),
                "sas token",
            ),
            (
                AzureBlobBuilder::new()
                    .with_account("acct")
                    .with_container("locks")
                    .with_access_key(key)
                    .with_prefix("a b")
                    .build(),
                "prefix",
            ),
            (
                AzureBlobBuilder::new()
                    .with_account("acct")
                    .with_container("locks")
                    .with_access_key(key)
                    .with_endpoint("ftp://x")
                    .build(),
                "endpoint",
            ),
        ];
        for (result, field) in cases {
            let err = result.unwrap_err();
            assert_eq!(err.field(), field, "{err}");
        }
    }

    #[test]
    fn connection_strings() {
        let dev = AzureBlobBuilder::new()
            .with_connection_string("UseDevelopmentStorage=true")
            .unwrap()
            .with_container("locks")
            .build()
            .unwrap();
        assert_eq!(dev.account(), AZURITE_ACCOUNT);
        let cs = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
        );
        let b = AzureBlobBackend::from_connection_string(&cs, "locks").unwrap();
        assert!(
            b.container
                .url()
                .as_str()
                .starts_with("http://127.0.0.1:10001/devstoreaccount1/locks")
        );
        let derived = AzureBlobBuilder::new()
            .with_connection_string(&format!("AccountName=acct;AccountKey={AZURITE_ACCOUNT_KEY};EndpointSuffix=core.chinacloudapi.cn"))
            .unwrap()
            .with_container("locks")
            .build()
            .unwrap();
        assert!(
            derived
                .container
                .url()
                .as_str()
                .starts_with("https://acct.blob.core.chinacloudapi.cn/locks")
        );
        // Errors name the part, never the key.
        let err = AzureBlobBuilder::new()
            .with_connection_string("AccountName=acct;AccountKey=SECRETKEY;Bogus=1")
            .unwrap_err();
        assert_eq!(err.field(), "connection string");
        assert!(!err.to_string().contains("SECRETKEY"), "{err}");
        let err = AzureBlobBuilder::new()
            .with_connection_string("AccountName=acct;AccountKey=SECRET KEY!")
            .unwrap()
            .with_container("locks")
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "account key");
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn secrets_are_not_in_debug() {
        let builder = AzureBlobBuilder::new()
            .with_account("acct")
            .with_access_key(AZURITE_ACCOUNT_KEY)
            .with_sas_token("sv=1&sig=SECRETSIG")
            .with_container("locks");
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("Eby8") && !shown.contains("SECRETSIG"),
            "{shown}"
        );
        let backend = builder.build().unwrap();
        let shown = format!("{backend:?}");
        assert!(
            !shown.contains("Eby8") && !shown.contains("SECRETSIG"),
            "{shown}"
        );
    }

    #[test]
    fn entra_needs_https() {
        #[derive(Debug)]
        struct NoToken;
        #[async_trait::async_trait]
        impl TokenCredential for NoToken {
            async fn get_token(
                &self,
                _scopes: &[&str],
                _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
            ) -> azure_core::Result<azure_core::credentials::AccessToken> {
                Err(azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Credential,
                    "no token in tests",
                ))
            }
        }
        let err = AzureBlobBuilder::new()
            .with_url("http://127.0.0.1:10000/devstoreaccount1/locks")
            .unwrap()
            .with_token_credential(Arc::new(NoToken))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "credential");
        let ok = AzureBlobBuilder::new()
            .with_url("azblob://acct/locks")
            .unwrap()
            .with_token_credential(Arc::new(NoToken))
            .build()
            .unwrap();
        assert!(format!("{ok:?}").contains("TokenCredential"));
    }
}
