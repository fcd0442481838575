//! Throwaway certificates made with rcgen, and TLS configs built on them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use opamp_client::ClientTlsConfig;
use opamp_server::{ClientAuth, ServerTlsConfig};

type Issuer = rcgen::Issuer<'static, rcgen::KeyPair>;

/// A test CA with a server certificate for `localhost` and `127.0.0.1`
/// (IP address SAN, as Go requires), a client certificate (`agent-1`) from
/// the same CA, and a client certificate from an unrelated ("rogue") CA.
/// All PEM, keys in PKCS#8.
pub struct TestPki {
    /// The CA certificate.
    pub ca_pem: String,
    /// The CA's key, for servers that issue client certificates themselves.
    pub ca_key_pem: String,
    /// The server certificate.
    pub server_cert_pem: String,
    /// The server's key.
    pub server_key_pem: String,
    /// A client certificate from the CA.
    pub client_cert_pem: String,
    /// Its key.
    pub client_key_pem: String,
    /// A CA the server does not trust.
    pub rogue_ca_pem: String,
    /// A client certificate from the rogue CA.
    pub rogue_client_cert_pem: String,
    /// Its key.
    pub rogue_client_key_pem: String,
    issuer: Issuer,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

/// Where [`TestPki::write`] put the PEM files.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The CA certificate (`ca.pem`).
    pub ca: PathBuf,
    /// The CA's key (`ca.key`).
    pub ca_key: PathBuf,
    /// The server certificate (`server.pem`).
    pub cert: PathBuf,
    /// The server key (`server.key`).
    pub key: PathBuf,
    /// The client certificate (`client.pem`).
    pub client_cert: PathBuf,
    /// The client key (`client.key`).
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates fresh keys and certificates.
    pub fn generate() -> Self {
        let (ca_pem, ca_key_pem, issuer) = authority("opamp-rs test CA");
        let (rogue_ca_pem, _, rogue_issuer) = authority("rogue CA");
        let (server_cert_pem, server_key_pem) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert_pem, client_key_pem) = leaf(
            &issuer,
            &["agent-1"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (rogue_client_cert_pem, rogue_client_key_pem) = leaf(
            &rogue_issuer,
            &["intruder"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        );
        Self {
            ca_pem,
            ca_key_pem,
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
            rogue_ca_pem,
            rogue_client_cert_pem,
            rogue_client_key_pem,
            issuer,
        }
    }

    /// Issues another client certificate from the CA, for `names` (the
    /// first is also the common name): `(certificate, key)`.
    pub fn issue_client(&self, names: &[&str]) -> (String, String) {
        leaf(
            &self.issuer,
            names,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// Issues another server certificate from the CA, for `names`:
    /// `(certificate, key)`.
    pub fn issue_server(&self, names: &[&str]) -> (String, String) {
        leaf(
            &self.issuer,
            names,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// Server TLS settings for opamp-server / opamp-transport: the server
    /// certificate, no client certificates asked for.
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new(self.server_cert_pem.clone(), self.server_key_pem.clone())
    }

    /// Client TLS settings for opamp-client / opamp-transport: trusts the
    /// test CA only, no client certificate.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().with_root_ca_pem(self.ca_pem.clone())
    }

    /// [`client_tls`](Self::client_tls) presenting the client certificate.
    pub fn client_tls_with_certificate(&self) -> ClientTlsConfig {
        self.client_tls()
            .with_client_identity_pem(self.client_cert_pem.clone(), self.client_key_pem.clone())
    }

    /// [`server_tls`](Self::server_tls) requiring a client certificate from
    /// the CA (mutual TLS).
    pub fn server_tls_mutual(&self) -> ServerTlsConfig {
        self.server_tls()
            .with_client_ca_pem(self.ca_pem.clone(), ClientAuth::Required)
    }

    /// A plain rustls server config with the server certificate; with
    /// `require_client_certificate`, clients must present one from the CA.
    pub fn rustls_server_config(
        &self,
        require_client_certificate: bool,
    ) -> Arc<rustls::ServerConfig> {
        let tls = if require_client_certificate {
            self.server_tls_mutual()
        } else {
            self.server_tls()
        };
        tls.build().expect("server TLS config")
    }

    /// A plain rustls client config trusting the CA; with
    /// `with_certificate`, it presents the client certificate.
    pub fn rustls_client_config(&self, with_certificate: bool) -> Arc<rustls::ClientConfig> {
        let tls = if with_certificate {
            self.client_tls_with_certificate()
        } else {
            self.client_tls()
        };
        tls.build().expect("client TLS config")
    }

    /// Writes the PEM files into `dir`.
    pub fn write(&self, dir: &Path) -> PkiFiles {
        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents)
                .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
            path
        };
        PkiFiles {
            ca: write("ca.pem", &self.ca_pem),
            ca_key: write("ca.key", &self.ca_key_pem),
            cert: write("server.pem", &self.server_cert_pem),
            key: write("server.key", &self.server_key_pem),
            client_cert: write("client.pem", &self.client_cert_pem),
            client_key: write("client.key", &self.client_key_pem),
        }
    }
}

fn authority(name: &str) -> (String, String, Issuer) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA certificate");
    let key_pem = key.serialize_pem();
    (cert.pem(), key_pem, rcgen::Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer,
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let mut params = rcgen::CertificateParams::new(
        names
            .iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>(),
    )
    .expect("leaf params");
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, *first);
    }
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    (cert.pem(), key.serialize_pem())
}
