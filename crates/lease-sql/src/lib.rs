//! SQL lease backends for [`lease_core`] (placeholder: see issue "lease-sql").

pub use lease_core::*;
