//! TLS settings for client connectors and servers, turned into rustls configs.
//!
//! Every config is built with an explicit rustls [`CryptoProvider`] picked by
//! this crate's features: `tls-ring` (preferred when both are on) or
//! `tls-aws-lc`. The process-wide default provider is never consulted, so an
//! application that installs a different default is not affected and an
//! application that installs none still works. With neither feature enabled,
//! building a TLS config fails with [`TlsError::NoCryptoProvider`]; plain
//! `ws://` and `http://` keep working.
//!
//! [`ClientTlsConfig`](crate::ClientTlsConfig) (feature `client`) and
//! [`ServerTlsConfig`](crate::ServerTlsConfig) (feature `server`) live in
//! their own files; this module holds what both build on.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[cfg(feature = "client")]
mod client;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "client")]
pub use client::{ClientTlsConfig, SystemRoots};
#[cfg(feature = "server")]
pub use server::{ClientAuth, ServerTlsConfig};

/// The ALPN protocol both sides offer: OpAMP runs WebSocket and plain HTTP
/// over HTTP/1.1 only.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Errors while building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The crate was built without `tls-ring` and without `tls-aws-lc`, so
    /// there is no crypto provider to build a TLS config with.
    #[error("TLS is not available: enable the `tls-ring` or `tls-aws-lc` feature")]
    NoCryptoProvider,
    /// PEM text could not be parsed.
    #[error("invalid PEM in {what}: {source}")]
    InvalidPem {
        /// Which input was bad (for example "root CA").
        what: &'static str,
        /// The parser's error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// PEM text parsed but held no certificate.
    #[error("no certificate found in {what}")]
    NoCertificates {
        /// Which input was empty (for example "client certificate").
        what: &'static str,
    },
    /// The private key PEM held no usable key (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key found in {what}")]
    NoPrivateKey {
        /// Which input lacked a key.
        what: &'static str,
    },
    /// A root certificate was rejected as a trust anchor.
    #[error("invalid root certificate: {0}")]
    InvalidRootCertificate(#[source] rustls::Error),
    /// No trust anchors at all: no custom CA and no system roots.
    #[error("no trusted root certificates configured")]
    NoRootCertificates,
    /// The client-certificate verifier for mTLS could not be built.
    #[error("cannot build client certificate verifier: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls rejected the configuration (bad key, version mismatch, ...).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider chosen by crate features (ring preferred).
pub(crate) fn crypto_provider() -> Result<Arc<CryptoProvider>, TlsError> {
    #[cfg(feature = "tls-ring")]
    {
        Ok(Arc::new(rustls::crypto::ring::default_provider()))
    }
    #[cfg(all(feature = "tls-aws-lc", not(feature = "tls-ring")))]
    {
        Ok(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
    }
    #[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc")))]
    {
        Err(TlsError::NoCryptoProvider)
    }
}

/// A TLS protocol version, for minimum/maximum bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// Parses the OpAMP `TLSConnectionSettings` spelling (`"1.2"`, `"1.3"`).
    /// Older versions are not supported by rustls and yield `None`.
    pub fn from_opamp(text: &str) -> Option<Self> {
        match text.trim() {
            "1.2" => Some(Self::Tls12),
            "1.3" => Some(Self::Tls13),
            _ => None,
        }
    }
}

fn protocol_versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let min = min.unwrap_or(TlsVersion::Tls12);
    let max = max.unwrap_or(TlsVersion::Tls13);
    let mut versions = Vec::new();
    if min <= TlsVersion::Tls12 && TlsVersion::Tls12 <= max {
        versions.push(&rustls::version::TLS12);
    }
    if min <= TlsVersion::Tls13 && TlsVersion::Tls13 <= max {
        versions.push(&rustls::version::TLS13);
    }
    versions
}

/// A certificate chain and private key, both PEM.
#[derive(Clone)]
struct IdentityPem {
    cert_chain: Vec<u8>,
    key: Vec<u8>,
}

fn parse_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::InvalidPem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates { what });
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey { what },
        source => TlsError::InvalidPem { what, source },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_bounds() {
        assert_eq!(protocol_versions(None, None).len(), 2);
        let only13 = protocol_versions(Some(TlsVersion::Tls13), None);
        assert_eq!(only13.len(), 1);
        assert_eq!(only13[0].version, rustls::ProtocolVersion::TLSv1_3);
        let only12 = protocol_versions(None, Some(TlsVersion::Tls12));
        assert_eq!(only12[0].version, rustls::ProtocolVersion::TLSv1_2);
        assert!(protocol_versions(Some(TlsVersion::Tls13), Some(TlsVersion::Tls12)).is_empty());
        assert_eq!(TlsVersion::from_opamp("1.3"), Some(TlsVersion::Tls13));
        assert_eq!(TlsVersion::from_opamp("1.0"), None);
    }
}
