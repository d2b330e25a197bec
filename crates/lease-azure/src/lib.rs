//! Azure Blob Storage lease backend for [`lease_core`].
//!
//! Not implemented yet: this crate is a placeholder so the workspace has its final shape. The planned
//! algorithm (a blob lease per key, a client-proposed lease id, a fencing counter in blob metadata written
//! with the lease id and `If-Match`) is described in `docs/protocol.md` and the design brief.

pub use lease_core::*;
