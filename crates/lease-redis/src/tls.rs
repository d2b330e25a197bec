//! TLS for `rediss://`: the client builds its rustls configuration from the process's default
//! crypto provider, so one must be installed.

/// Installs ring as the process's rustls provider unless one is installed already (by the
/// application, or by another library). Installing is idempotent and racing installs are fine.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
