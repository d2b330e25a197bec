//! Object-storage lease backend (S3, GCS, Azure, memory through `object_store`) for [`lease_core`].
//!
//! Not implemented yet: this crate is a placeholder so the workspace has its final shape. The planned
//! algorithm (one small versioned JSON document per key, `PutMode::Create` / `PutMode::Update(etag)`,
//! observed expiry on the contender's monotonic clock) is described in `docs/protocol.md`.

pub use lease_core::*;
