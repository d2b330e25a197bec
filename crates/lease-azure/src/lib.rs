//! Azure Blob Storage leases with fencing tokens, for [`lease_core`].
//!
//! Each key is a blob in one container (created when missing). Acquiring takes Azure's native blob
//! lease with the holder token as the proposed lease id and an explicit duration (15 to 60 s, the
//! service's range; never an infinite lease), then bumps a fencing counter in the blob's metadata
//! with that lease id and `If-Match` on the ETag just read. Only the lease holder can write the
//! metadata and the ETag rules out lost updates, so every grant's token is strictly greater than
//! all earlier ones. Renew and release are single lease calls; `break` is the admin operation. A
//! blob that already holds data is never overwritten: only its metadata is touched, and metadata
//! entries of others are kept.
//!
//! The crate re-exports everything a user needs from `lease_core` (the [`Locker`], [`Lease`],
//! errors…), so it is the only dependency to add. `docs/backends/azure.md` in the repository has
//! the mapping onto the lease contract, the fencing proof sketch and request counts.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use lease_azure::{AzureBlobBackend, AzureBlobBuilder, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Azurite on 127.0.0.1:10000 in one line; for Azure use the builder or a URL:
//! //   AzureBlobBackend::from_url("azblob://myaccount/locks")?   (key/SAS from the environment)
//! let store = AzureBlobBackend::azurite("locks")?;
//! let locker = Locker::builder(store).ttl(Duration::from_secs(30)).build()?;
//! if let Some(lease) = locker.try_acquire("nightly-export").await? {
//!     println!("exporting with fencing token {}", lease.fencing_token());
//!     lease.release().await?;
//! }
//! # let _ = AzureBlobBuilder::new();
//! # Ok(()) }
//! ```
//!
//! # Authentication
//!
//! - account key (Shared Key): [`AzureBlobBuilder::with_access_key`], `AZURE_STORAGE_KEY`, or
//!   `AccountKey=` in a connection string; every try of every request is signed with a fresh date;
//! - SAS: [`AzureBlobBuilder::with_sas_token`], `AZURE_STORAGE_SAS_TOKEN`, or the query of an
//!   https:// URL;
//! - Entra ID: [`AzureBlobBuilder::with_token_credential`] with any `azure_core` token credential
//!   (for example from `azure_identity`); https:// endpoints only;
//! - a connection string: [`AzureBlobBuilder::with_connection_string`],
//!   `AZURE_STORAGE_CONNECTION_STRING`, including `UseDevelopmentStorage=true` for Azurite.
//!
//! Keys and SAS signatures never appear in `Debug` output, logs or errors.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod auth;
mod backend;
mod builder;
mod error;
mod fencing;

pub use backend::{AzureBlobBackend, MAX_TTL, MIN_TTL};
pub use builder::{
    AZURITE_ACCOUNT, AZURITE_ACCOUNT_KEY, AZURITE_BLOB_ENDPOINT, AzureBlobBuilder, ENV_ACCOUNT,
    ENV_BLOB_ENDPOINT, ENV_CONNECTION_STRING, ENV_KEY, ENV_SAS_TOKEN,
};
pub use lease_core::*;

/// The Azure SDK core crate, so token credentials (Entra ID) and policies name the same traits.
pub use azure_core;
/// The Azure Blob SDK crate, for [`AzureBlobBackend::container_client`].
pub use azure_storage_blob;

/// The crate README's examples (shown on crates.io), compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
