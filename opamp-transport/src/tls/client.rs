//! Client-side TLS: trust anchors (custom CAs, the system store, the bundled
//! Mozilla roots), an optional client certificate, and the development-only
//! insecure mode.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{
    ALPN_HTTP11, IdentityPem, TlsError, TlsVersion, crypto_provider, parse_certs, parse_key,
    protocol_versions,
};

/// Which system trust anchors a client trusts, in addition to any custom CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SystemRoots {
    /// Use the operating system's store only when no custom root CA is
    /// configured; if the OS store yields nothing, fall back to the bundled
    /// Mozilla roots. This is the default.
    #[default]
    Auto,
    /// Never trust system roots: only the custom root CAs.
    None,
    /// Always add the operating system's store (via `rustls-native-certs`).
    /// This is OpAMP's `include_system_ca_certs_pool = true`.
    Native,
    /// Always add the bundled Mozilla roots (`webpki-roots`), which do not
    /// depend on the host.
    WebPki,
}

/// Client-side TLS settings for `wss://` and `https://` endpoints.
///
/// Cheap to clone: the built rustls config is cached and shared by clones, so
/// system roots are loaded once, not on every reconnect. Changing a setting
/// with a `with_*` method starts a fresh cache.
///
/// ```
/// use opamp_transport::{ClientTlsConfig, SystemRoots};
///
/// # let ca_pem = b"".to_vec();
/// let tls = ClientTlsConfig::new()
///     .with_root_ca_pem(ca_pem)
///     .with_system_roots(SystemRoots::None);
/// # let _ = tls;
/// ```
#[derive(Clone, Default)]
pub struct ClientTlsConfig {
    root_ca_pems: Vec<Vec<u8>>,
    system_roots: SystemRoots,
    identity: Option<IdentityPem>,
    insecure_skip_verify: bool,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
    prebuilt: Option<Arc<rustls::ClientConfig>>,
    cache: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
}

impl ClientTlsConfig {
    /// Default settings: system roots (see [`SystemRoots::Auto`]), no client
    /// certificate, certificate verification on, TLS 1.2 and 1.3.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses a ready-made rustls config as is; every other setting is ignored.
    /// The caller is responsible for its crypto provider and ALPN
    /// (offer `http/1.1`).
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        Self {
            prebuilt: Some(config),
            ..Self::default()
        }
    }

    /// Adds trusted root CA certificates from PEM text (one or more
    /// `CERTIFICATE` blocks). Can be called several times.
    pub fn with_root_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_ca_pems.push(pem.into());
        self.reset()
    }

    /// Chooses which system trust anchors to add (default [`SystemRoots::Auto`]).
    pub fn with_system_roots(mut self, roots: SystemRoots) -> Self {
        self.system_roots = roots;
        self.reset()
    }

    /// Presents a client certificate for mutual TLS: the certificate chain
    /// (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1), both PEM.
    pub fn with_client_identity_pem(
        mut self,
        cert_chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some(IdentityPem {
            cert_chain: cert_chain_pem.into(),
            key: key_pem.into(),
        });
        self.reset()
    }

    /// **Development only.** Accepts any server certificate and host name.
    /// A warning is logged each time such a config is built. Handshake
    /// signatures are still checked, so this does not disable TLS itself.
    pub fn with_insecure_skip_verify(mut self, skip: bool) -> Self {
        self.insecure_skip_verify = skip;
        self.reset()
    }

    /// Lowest TLS version to negotiate (default TLS 1.2).
    pub fn with_min_version(mut self, version: TlsVersion) -> Self {
        self.min_version = Some(version);
        self.reset()
    }

    /// Highest TLS version to negotiate (default TLS 1.3).
    pub fn with_max_version(mut self, version: TlsVersion) -> Self {
        self.max_version = Some(version);
        self.reset()
    }

    /// Whether certificate verification is disabled.
    pub fn insecure_skip_verify(&self) -> bool {
        self.insecure_skip_verify
    }

    fn reset(mut self) -> Self {
        self.cache = Arc::default();
        self
    }

    /// Builds (or returns the cached) rustls client config, offering ALPN
    /// `http/1.1`.
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        if let Some(prebuilt) = &self.prebuilt {
            return Ok(prebuilt.clone());
        }
        if let Some(cached) = self.cache.get() {
            return Ok(cached.clone());
        }
        let built = Arc::new(self.build_uncached()?);
        // A concurrent builder may have won the race; both results are equal.
        Ok(self.cache.get_or_init(|| built).clone())
    }

    fn build_uncached(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = crypto_provider()?;
        let versions = protocol_versions(self.min_version, self.max_version);
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?;

        let builder = if self.insecure_skip_verify {
            tracing::warn!(
                "TLS certificate verification is DISABLED (insecure_skip_verify); \
                 use this only for development"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider }))
        } else {
            builder.with_root_certificates(self.root_store()?)
        };

        let mut config = match &self.identity {
            Some(identity) => {
                let chain = parse_certs(&identity.cert_chain, "client certificate")?;
                let key = parse_key(&identity.key, "client private key")?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(config)
    }

    fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        for pem in &self.root_ca_pems {
            for cert in parse_certs(pem, "root CA")? {
                store.add(cert).map_err(TlsError::InvalidRootCertificate)?;
            }
        }
        match self.system_roots {
            SystemRoots::None => {}
            SystemRoots::Native => add_native_roots(&mut store),
            SystemRoots::WebPki => add_webpki_roots(&mut store),
            SystemRoots::Auto if self.root_ca_pems.is_empty() => {
                add_native_roots(&mut store);
                if store.is_empty() {
                    tracing::debug!(
                        "no system root certificates found; using bundled webpki roots"
                    );
                    add_webpki_roots(&mut store);
                }
            }
            SystemRoots::Auto => {}
        }
        if store.is_empty() {
            return Err(TlsError::NoRootCertificates);
        }
        Ok(store)
    }
}

impl fmt::Debug for ClientTlsConfig {
    // Key material never appears in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("root_ca_pems", &self.root_ca_pems.len())
            .field("system_roots", &self.system_roots)
            .field("client_identity", &self.identity.is_some())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("min_version", &self.min_version)
            .field("max_version", &self.max_version)
            .field("prebuilt", &self.prebuilt.is_some())
            .finish()
    }
}

fn add_native_roots(store: &mut RootCertStore) {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::debug!(%error, "while loading system root certificates");
    }
    let (added, ignored) = store.add_parsable_certificates(loaded.certs);
    tracing::debug!(added, ignored, "loaded system root certificates");
}

fn add_webpki_roots(store: &mut RootCertStore) {
    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
}

/// Verifier behind `insecure_skip_verify`: trusts any certificate but still
/// checks that the peer owns the key it presented.
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
    #[test]
    fn bad_pem_is_typed() {
        let err = ClientTlsConfig::new()
            .with_root_ca_pem(b"not pem at all".to_vec())
            .with_system_roots(SystemRoots::None)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, TlsError::NoCertificates { what: "root CA" }),
            "{err:?}"
        );

        let truncated = b"-----BEGIN CERTIFICATE-----\nAAAA\n".to_vec();
        let err = ClientTlsConfig::new()
            .with_root_ca_pem(truncated)
            .with_system_roots(SystemRoots::None)
            .build()
            .unwrap_err();
        assert!(matches!(err, TlsError::InvalidPem { .. }), "{err:?}");
    }

    #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
    #[test]
    fn no_roots_is_an_error_not_a_silent_empty_store() {
        let err = ClientTlsConfig::new()
            .with_system_roots(SystemRoots::None)
            .build()
            .unwrap_err();
        assert!(matches!(err, TlsError::NoRootCertificates), "{err:?}");
    }

    #[cfg(any(feature = "tls-ring", feature = "tls-aws-lc"))]
    #[test]
    fn webpki_roots_build_and_cache_is_shared_by_clones() {
        let tls = ClientTlsConfig::new().with_system_roots(SystemRoots::WebPki);
        let copy = tls.clone();
        let first = tls.build().unwrap();
        let second = copy.build().unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(first.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // A changed setting must not reuse the old config.
        let changed = tls.with_insecure_skip_verify(true).build().unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
    }

    #[cfg(not(any(feature = "tls-ring", feature = "tls-aws-lc")))]
    #[test]
    fn without_a_provider_feature_tls_is_a_typed_error() {
        let err = ClientTlsConfig::new()
            .with_system_roots(SystemRoots::WebPki)
            .build()
            .unwrap_err();
        assert!(matches!(err, TlsError::NoCryptoProvider), "{err:?}");
    }

    #[test]
    fn debug_hides_key_material() {
        let tls = ClientTlsConfig::new()
            .with_client_identity_pem(b"CERTDATA".to_vec(), b"SECRETKEY".to_vec());
        let text = format!("{tls:?}");
        assert!(!text.contains("SECRETKEY"), "{text}");
    }
}
