//! The TLS (and mTLS) settings of `--tls-cert`, `--tls-key` and
//! `--tls-client-ca`, read before anything starts.
use anyhow::Context;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::SecurityArgs;

fn read(what: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Makes ring the process's TLS crypto provider (tonic's), before any TLS
/// config is built: the S3 client links aws-lc-rs too, and with two
/// providers in the binary rustls refuses to guess. Idempotent.
pub fn choose_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `None` when the server runs in plaintext.
pub(super) fn tls_config(security: &SecurityArgs) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&security.tls_cert, &security.tls_key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &security.tls_client_ca {
        // Clients without a certificate signed by this CA are refused.
        config = config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
    }
    Ok(Some(config))
}
