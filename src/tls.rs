//! rustls client configs: the system's roots plus an optional extra CA, optionally a client
//! certificate. One crypto provider (ring) for the whole process.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its key: a client certificate (mTLS) or a server certificate.
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The same chain and key (a reload compares configs).
impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.certs == other.certs && self.key.secret_der() == other.key.secret_der()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity {{ certs: {}, key: *** }}", self.certs.len())
    }
}

/// Builds a TLS client config trusting the system's roots and `extra_roots`.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
    client_auth: Option<&Identity>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::debug!(error = %err, "while loading the system's CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system CA certificates loaded");
    for cert in extra_roots {
        roots.add(cert.clone())?;
    }
    if roots.is_empty() {
        tracing::warn!(
            "no CA certificates found: install the ca-certificates package or set a ca_file, or TLS connections will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client_auth {
        Some(auth) => builder.with_client_auth_cert(auth.certs.clone(), auth.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
