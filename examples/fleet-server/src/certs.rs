//! The client CA used to issue agent certificates on rotation.

use std::path::Path;
use std::sync::Arc;

use opamp_proto::InstanceUid;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType,
};

/// A CA certificate and its key, loaded from PEM files, that signs new
/// client certificates for agents (`POST /api/agents/{uid}/rotate-certificate`).
#[derive(Clone)]
pub struct ClientCa {
    cert_pem: String,
    issuer: Arc<Issuer<'static, KeyPair>>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa").finish_non_exhaustive()
    }
}

/// A freshly issued client certificate and its private key, both PEM.
pub(crate) struct IssuedCertificate {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// The client CA could not be loaded or could not sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientCaError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate or key is not usable.
    #[error("invalid client CA: {0}")]
    Invalid(#[from] rcgen::Error),
}

impl ClientCa {
    /// Loads the CA certificate and its private key (PEM files).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, ClientCaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| ClientCaError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Self::from_pem(&read(cert_path)?, &read(key_path)?)
    }

    /// Builds the CA from PEM text.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, ClientCaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer: Arc::new(issuer),
        })
    }

    /// The CA certificate, PEM.
    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a client certificate for agent `uid`: the uid is the common
    /// name and a `urn:uuid:` SAN, so a server can tie the certificate to
    /// the agent (CS-36).
    pub(crate) fn issue(&self, uid: InstanceUid) -> Result<IssuedCertificate, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, uid.to_string());
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::URI(format!("urn:uuid:{uid}").try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
