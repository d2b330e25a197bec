//! MySQL (placeholder).
