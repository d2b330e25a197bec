//! The `lease` command is this package's binary (see `docs/cli.md`); this library has nothing to
//! use. It exists so that the repository README's Rust examples compile as doc tests, against the
//! dependencies the README tells a user to add (`lease-sql` and `tokio`).

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;
