//! TLS settings for client connectors and servers, turned into rustls configs.
//!
//! Every config is built with an explicit rustls [`CryptoProvider`] picked by
//! this crate's features: `tls-ring` (preferred when both are on) or
//! `tls-aws-lc`. The process-wide default provider is never consulted, so an
//! application that installs a different default is not affected and an
//! application that installs none still works. With neither feature enabled,
//! building a TLS config fails with [`TlsError::NoCryptoProvider`]; plain
//! `ws://` and `http://` keep working.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

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

/// A certificate chain and private key, both PEM.
#[derive(Clone)]
struct IdentityPem {
    cert_chain: Vec<u8>,
    key: Vec<u8>,
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

    /// Lowest TLS version to accept (default TLS 1.2).
    pub fn with_min_version(mut self, version: TlsVersion) -> Self {
        self.min_version = Some(version);
        self
    }

    /// Highest TLS version to accept (default TLS 1.3).
    pub fn with_max_version(mut self, version: TlsVersion) -> Self {
        self.max_version = Some(version);
        self
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
        let err = ServerTlsConfig::new(Vec::new(), Vec::new())
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
        let server = ServerTlsConfig::new(b"CERTDATA".to_vec(), b"SECRETKEY".to_vec());
        assert!(!format!("{server:?}").contains("SECRETKEY"));
    }
}
