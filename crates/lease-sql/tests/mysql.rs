#![cfg(feature = "mysql")]
//! mysql tests.
