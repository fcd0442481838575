//! Throwaway certificates for the TLS scenarios, made with `rcgen`.

use std::path::{Path, PathBuf};

use opamp_client::ClientTlsConfig;
use opamp_server::ServerTlsConfig;

/// A test CA and a server certificate it signed, valid for `127.0.0.1` and
/// `localhost`. All PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate.
    pub ca_pem: String,
    /// The CA's private key (PKCS#8), for servers that issue client
    /// certificates with it.
    pub ca_key_pem: String,
    /// The server certificate.
    pub server_cert_pem: String,
    /// The server's private key (PKCS#8).
    pub server_key_pem: String,
}

/// Where [`Pki::write`] put the PEM files (for the Go programs' flags).
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The CA certificate (`goagent --ca-file`).
    pub ca: PathBuf,
    /// The server certificate (`goserver --cert`).
    pub cert: PathBuf,
    /// The server key (`goserver --key`).
    pub key: PathBuf,
    /// The CA's key (the fleet server's `--client-ca-key`).
    pub ca_key: PathBuf,
}

impl Pki {
    /// Generates a fresh CA and server certificate.
    pub fn generate() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "opamp-rs interop CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = rcgen::KeyPair::generate().expect("server key");
        // rcgen makes "127.0.0.1" an IP address SAN, which Go requires for
        // an IP endpoint.
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        Self {
            ca_pem: ca_cert.pem(),
            ca_key_pem,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
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
            cert: write("server.pem", &self.server_cert_pem),
            key: write("server.key", &self.server_key_pem),
            ca_key: write("ca.key", &self.ca_key_pem),
        }
    }

    /// TLS settings for our server.
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new(self.server_cert_pem.clone(), self.server_key_pem.clone())
    }

    /// TLS settings for our client: trusts the test CA (with a custom CA,
    /// the default leaves the system roots out).
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().with_root_ca_pem(self.ca_pem.clone())
    }
}
