//! Server-side TLS: certificate chain and key, optionally a client CA for
//! mutual TLS.

use std::fmt;
use std::sync::Arc;

use rustls::RootCertStore;

use super::{
    ALPN_HTTP11, IdentityPem, TlsError, TlsVersion, crypto_provider, parse_certs, parse_key,
    protocol_versions,
};

/// Whether a server asks for client certificates, and whether it insists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// Clients must present a certificate signed by the client CA.
    #[default]
    Required,
    /// A certificate is requested and verified if presented; clients without
    /// one are still accepted.
    Optional,
}

/// Server-side TLS settings: certificate chain and key, optionally a client
/// CA for mutual TLS.
///
/// ```no_run
/// use opamp_transport::{ClientAuth, ServerTlsConfig};
///
/// # fn demo(cert_pem: Vec<u8>, key_pem: Vec<u8>, client_ca_pem: Vec<u8>) -> Result<(), opamp_transport::TlsError> {
/// let rustls_config = ServerTlsConfig::new(cert_pem, key_pem)
///     .with_client_ca_pem(client_ca_pem, ClientAuth::Required)
///     .build()?;
/// let acceptor = tokio_rustls::TlsAcceptor::from(rustls_config);
/// # let _ = acceptor; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTlsConfig {
    identity: IdentityPem,
    client_ca: Option<(Vec<u8>, ClientAuth)>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
}

impl ServerTlsConfig {
    /// A server certificate chain (leaf first) and its private key, both PEM.
    pub fn new(cert_chain_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            identity: IdentityPem {
                cert_chain: cert_chain_pem.into(),
                key: key_pem.into(),
            },
            client_ca: None,
            min_version: None,
            max_version: None,
        }
    }

    /// Verifies client certificates against this CA (PEM) for mutual TLS.
    pub fn with_client_ca_pem(mut self, ca_pem: impl Into<Vec<u8>>, auth: ClientAuth) -> Self {
        self.client_ca = Some((ca_pem.into(), auth));
        self
    }

    crate::builder_setters! {
        /// Lowest TLS version to accept (default TLS 1.2).
        pub fn with_min_version(version: TlsVersion) => min_version = Some(version);

        /// Highest TLS version to accept (default TLS 1.3).
        pub fn with_max_version(version: TlsVersion) => max_version = Some(version);
    }

    /// Builds the rustls server config, with ALPN `http/1.1`.
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = crypto_provider()?;
        let versions = protocol_versions(self.min_version, self.max_version);
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some((ca_pem, auth)) => {
                let mut roots = RootCertStore::empty();
                for cert in parse_certs(ca_pem, "client CA")? {
                    roots.add(cert).map_err(TlsError::InvalidRootCertificate)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let verifier = match auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                builder
                    .with_client_cert_verifier(verifier.build().map_err(TlsError::ClientVerifier)?)
            }
        };
        let chain = parse_certs(&self.identity.cert_chain, "server certificate")?;
        let key = parse_key(&self.identity.key, "server private key")?;
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(Arc::new(config))
    }
}

impl fmt::Debug for ServerTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTlsConfig")
            .field(
                "client_auth",
                &self.client_ca.as_ref().map(|(_, auth)| auth),
            )
            .field("min_version", &self.min_version)
            .field("max_version", &self.max_version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc")))]
    #[test]
    fn without_a_provider_feature_tls_is_a_typed_error() {
        let err = ServerTlsConfig::new(Vec::new(), Vec::new())
            .build()
            .unwrap_err();
        assert!(matches!(err, TlsError::NoCryptoProvider), "{err:?}");
    }

    #[test]
    fn debug_hides_key_material() {
        let server = ServerTlsConfig::new(b"CERTDATA".to_vec(), b"SECRETKEY".to_vec());
        assert!(!format!("{server:?}").contains("SECRETKEY"));
    }
}
