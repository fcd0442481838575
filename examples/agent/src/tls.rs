//! TLS for the OpAMP connection: the flags, and client certificates the
//! server issues (certificate rotation, CSR flow).
//!
//! - The server may offer a certificate **with** its private key (it
//!   generated both): it is used as offered.
//! - With `--csr`, the agent generates a key pair here, sends a CSR
//!   (CS-28) and keeps the key; the server answers with a certificate
//!   **without** a private key (CS-31), which the agent completes with its
//!   key.
//!
//! Either way the client first connects with the new certificate (CS-05);
//! only when that works is it saved in `tls/` and used for every later
//! connection, including after a restart (CS-15).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use opamp_client::proto::{
    CertificateRequest, ConnectionSettingsRequest, OpAmpConnectionSettings,
    OpAmpConnectionSettingsRequest,
};
use opamp_client::{ClientTlsConfig, InstanceUid};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

use super::cli::AgentArgs;
use super::state::write_atomically_with_mode;

const CERT_FILE: &str = "client.crt";
const KEY_FILE: &str = "client.key";
const CSR_KEY_FILE: &str = "csr.key";

/// Client certificates kept in the state directory.
#[derive(Debug)]
pub(crate) struct Credentials {
    dir: PathBuf,
    /// The key of the CSR in flight.
    pending_key: Mutex<Option<String>>,
}

impl Credentials {
    pub(crate) fn new(dir: PathBuf) -> Self {
        let pending_key = std::fs::read_to_string(dir.join(CSR_KEY_FILE)).ok();
        Self {
            dir,
            pending_key: Mutex::new(pending_key),
        }
    }

    /// A certificate and key saved after an earlier rotation.
    pub(crate) fn saved_identity(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let cert = std::fs::read(self.dir.join(CERT_FILE)).ok()?;
        let key = std::fs::read(self.dir.join(KEY_FILE)).ok()?;
        Some((cert, key))
    }

    /// Makes a key pair and a CSR naming `uid` (common name and a
    /// `urn:uuid:` SAN, CS-36); keeps the key for the answer.
    pub(crate) fn csr_request(
        &self,
        uid: InstanceUid,
    ) -> Result<ConnectionSettingsRequest, String> {
        let (csr_pem, key_pem) =
            make_csr(uid).map_err(|error| format!("cannot make a CSR: {error}"))?;
        write_private(&self.dir.join(CSR_KEY_FILE), key_pem.as_bytes())
            .map_err(|error| format!("cannot save the CSR key: {error}"))?;
        *self.lock() = Some(key_pem);
        Ok(ConnectionSettingsRequest {
            opamp: Some(OpAmpConnectionSettingsRequest {
                certificate_request: Some(CertificateRequest {
                    csr: csr_pem.into_bytes().into(),
                }),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.pending_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The settings to try for an offer: a certificate without a private
    /// key gets the key of the CSR in flight (CS-31).
    pub(crate) fn complete_offer(
        &self,
        offer: &OpAmpConnectionSettings,
    ) -> Result<OpAmpConnectionSettings, String> {
        let mut settings = offer.clone();
        if let Some(certificate) = &mut settings.certificate
            && !certificate.cert.is_empty()
            && certificate.private_key.is_empty()
        {
            let key = self
                .lock()
                .clone()
                .ok_or("certificate offered without a private key, and no CSR is pending")?;
            certificate.private_key = key.into_bytes().into();
        }
        Ok(settings)
    }

    /// Saves the certificate of settings that were verified by connecting.
    pub(crate) fn save_verified(&self, settings: &OpAmpConnectionSettings) -> std::io::Result<()> {
        let Some(certificate) = &settings.certificate else {
            return Ok(());
        };
        if certificate.cert.is_empty() || certificate.private_key.is_empty() {
            return Ok(());
        }
        write_private(&self.dir.join(KEY_FILE), &certificate.private_key)?;
        write_private(&self.dir.join(CERT_FILE), &certificate.cert)?;
        *self.lock() = None;
        match std::fs::remove_file(self.dir.join(CSR_KEY_FILE)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

/// The TLS settings from the flags, with a saved rotated certificate when
/// no `--client-cert` is given.
pub(crate) fn client_tls(
    args: &AgentArgs,
    credentials: &Credentials,
) -> Result<ClientTlsConfig, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
    };
    let mut tls = ClientTlsConfig::new().with_insecure_skip_verify(args.insecure);
    if let Some(ca) = &args.ca_file {
        tls = tls.with_root_ca_pem(read(ca)?);
    }
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        tls = tls.with_client_identity_pem(read(cert)?, read(key)?);
    } else if let Some((cert, key)) = credentials.saved_identity() {
        tracing::info!("using the client certificate saved after the last rotation");
        tls = tls.with_client_identity_pem(cert, key);
    }
    Ok(tls)
}

/// A fresh key pair and a PEM CSR for `uid`.
pub(crate) fn make_csr(uid: InstanceUid) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, uid.to_string());
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(format!("urn:uuid:{uid}").try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// Writes a file readable by the owner only, atomically.
fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    write_atomically_with_mode(path, content, 0o600)
}

#[cfg(test)]
mod tests {
    use opamp_client::proto::TlsCertificate;
    use rcgen::{CertificateSigningRequestParams, Issuer};

    use super::*;

    #[test]
    fn csr_answer_is_completed_with_the_kept_key_and_saved() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::new(dir.path().join("tls"));
        let uid = InstanceUid::new_v7();
        let request = credentials.csr_request(uid).unwrap();
        let csr = request.opamp.unwrap().certificate_request.unwrap().csr;

        // The server side of CS-30: sign the CSR with a CA.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca.pem(), ca_key).unwrap();
        let csr =
            CertificateSigningRequestParams::from_pem(std::str::from_utf8(&csr).unwrap()).unwrap();
        let cert = csr.signed_by(&issuer).unwrap();

        let offer = OpAmpConnectionSettings {
            certificate: Some(TlsCertificate {
                cert: cert.pem().into_bytes().into(),
                private_key: Default::default(),
                ca_cert: ca.pem().into_bytes().into(),
            }),
            ..Default::default()
        };
        let completed = credentials.complete_offer(&offer).unwrap();
        let key = completed.certificate.as_ref().unwrap().private_key.clone();
        assert!(std::str::from_utf8(&key).unwrap().contains("PRIVATE KEY"));
        // The completed identity is one rustls accepts.
        ClientTlsConfig::new()
            .with_client_identity_pem(cert.pem().into_bytes(), key.to_vec())
            .build()
            .unwrap();

        assert!(credentials.saved_identity().is_none());
        credentials.save_verified(&completed).unwrap();
        let (saved_cert, saved_key) = credentials.saved_identity().unwrap();
        assert_eq!(saved_cert, cert.pem().into_bytes());
        assert_eq!(saved_key, key.to_vec());
        assert!(!dir.path().join("tls").join(CSR_KEY_FILE).exists());
    }

    #[test]
    fn keyless_certificate_without_a_csr_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::new(dir.path().to_path_buf());
        let offer = OpAmpConnectionSettings {
            certificate: Some(TlsCertificate {
                cert: "CERT".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(credentials.complete_offer(&offer).is_err());
        // No certificate at all: passed through.
        assert!(
            credentials
                .complete_offer(&OpAmpConnectionSettings::default())
                .is_ok()
        );
    }
}
