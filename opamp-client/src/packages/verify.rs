//! Pluggable signature verification (PKG-09).

use bytes::Bytes;
use opamp_proto::PackageType;

/// The package whose signature is about to be checked.
#[derive(Clone, Copy, Debug)]
pub struct PackageToVerify<'a> {
    /// Package name (may be empty for the top-level package).
    pub name: &'a str,
    /// Top-level or add-on.
    pub package_type: PackageType,
    /// Offered version.
    pub version: &'a str,
    /// Where the file is downloaded from.
    pub download_url: &'a str,
    /// The offered SHA-256 of the file.
    pub content_hash: &'a Bytes,
    /// `DownloadableFile.signature`; empty when the package is unsigned.
    pub signature: &'a Bytes,
}

/// Why a signature check refused a package.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The package carries a signature but no verifier is configured, so it
    /// cannot be checked (the default policy, see [`RejectSignedPackages`]).
    #[error("package is signed but no signature verifier is configured")]
    NoVerifier,
    /// The verifier requires a signature and the package has none.
    #[error("package is not signed")]
    Unsigned,
    /// The signature does not match the content or is not trusted.
    #[error("signature rejected: {0}")]
    Rejected(String),
}

/// Checks package signatures.
///
/// For each download the syncer calls [`begin`](PackageVerifier::begin) before
/// the first byte (so an unacceptable package is refused without downloading
/// it), feeds every chunk to [`SignatureCheck::update`], and, once the SHA-256
/// matched the offered `content_hash`, calls [`SignatureCheck::finish`] with that
/// digest. Verifiers whose signatures cover the digest ignore the chunks;
/// verifiers whose signatures cover the raw bytes (for example detached GPG
/// signatures) hash the chunks themselves. Only when `finish` returns `Ok`
/// is the package installed.
///
/// These methods run on the syncer's task: they should be quick (hashing
/// speed), not block on I/O.
pub trait PackageVerifier: Send + Sync {
    /// Starts checking one package, or refuses it outright.
    fn begin(&self, package: &PackageToVerify<'_>) -> Result<Box<dyn SignatureCheck>, VerifyError>;
}

/// The state of one signature check; see [`PackageVerifier`].
pub trait SignatureCheck: Send {
    /// Sees the next chunk of the file. The default ignores it.
    fn update(&mut self, chunk: &[u8]) {
        let _ = chunk;
    }

    /// Decides, given the file's SHA-256 (already equal to the offered
    /// `content_hash`).
    fn finish(self: Box<Self>, sha256: &[u8; 32]) -> Result<(), VerifyError>;
}

/// A check that has already decided to accept.
struct Accept;

impl SignatureCheck for Accept {
    fn finish(self: Box<Self>, _sha256: &[u8; 32]) -> Result<(), VerifyError> {
        Ok(())
    }
}

/// The default verifier: accepts unsigned packages (their integrity still
/// rests on the verified SHA-256 `content_hash`) and refuses signed ones with
/// [`VerifyError::NoVerifier`].
///
/// Why refuse: a Server that signs a package expects the signature to be
/// checked, and installing it unchecked would give a false sense of safety.
/// Configure a real [`PackageVerifier`] to accept signed packages, or
/// [`IgnoreSignatures`] to opt out of checking explicitly.
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectSignedPackages;

impl PackageVerifier for RejectSignedPackages {
    fn begin(&self, package: &PackageToVerify<'_>) -> Result<Box<dyn SignatureCheck>, VerifyError> {
        if package.signature.is_empty() {
            Ok(Box::new(Accept))
        } else {
            Err(VerifyError::NoVerifier)
        }
    }
}

/// A verifier that accepts every package without looking at signatures: an
/// explicit opt-out for deployments that rely on the SHA-256 content hash and
/// a trusted Server alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct IgnoreSignatures;

impl PackageVerifier for IgnoreSignatures {
    fn begin(
        &self,
        _package: &PackageToVerify<'_>,
    ) -> Result<Box<dyn SignatureCheck>, VerifyError> {
        Ok(Box::new(Accept))
    }
}
