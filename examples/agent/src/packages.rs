//! Packages: the supervisor's secure auto-update, and an Ed25519 signature
//! verifier.
//!
//! The client's package syncer downloads a package, checks its SHA-256
//! against the offered `content_hash` and its signature (when a verifier is
//! configured) and only then commits it to the store. [`SupervisedStore`]
//! wraps the file store: for a **top-level** package it also stages the
//! bytes as an executable, and its commit hands that executable to the
//! supervisor, which runs it for a probation period. Only if it stays up is
//! the package committed (status INSTALLED); otherwise the supervisor goes
//! back to the previous executable, the staged package is discarded and the
//! syncer reports INSTALL_FAILED with the reason.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use opamp_client::proto::PackageType;
use opamp_client::{
    FsPackageStore, InstalledPackage, PackageInfo, PackageStore, PackageStoreError,
    PackageToVerify, PackageVerifier, PackageWriter, SignatureCheck, VerifyError,
};
use ring::signature::{ED25519, UnparsedPublicKey};
use tokio::io::AsyncWriteExt;

use super::supervisor::Supervisor;

/// A package store whose top-level package is the supervised executable.
#[derive(Debug, Clone)]
pub(crate) struct SupervisedStore {
    inner: FsPackageStore,
    supervisor: Supervisor,
    bin_dir: PathBuf,
    unique: Arc<AtomicU64>,
}

impl SupervisedStore {
    pub(crate) fn new(inner: FsPackageStore, supervisor: Supervisor, bin_dir: PathBuf) -> Self {
        Self {
            inner,
            supervisor,
            bin_dir,
            unique: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl PackageStore for SupervisedStore {
    fn installed(&self) -> BoxFuture<'_, Result<Vec<InstalledPackage>, PackageStoreError>> {
        self.inner.installed()
    }

    fn all_packages_hash(&self) -> BoxFuture<'_, Result<Bytes, PackageStoreError>> {
        self.inner.all_packages_hash()
    }

    fn set_all_packages_hash(&self, hash: Bytes) -> BoxFuture<'_, Result<(), PackageStoreError>> {
        self.inner.set_all_packages_hash(hash)
    }

    fn begin_install<'a>(
        &'a self,
        package: &'a PackageInfo,
    ) -> BoxFuture<'a, Result<Box<dyn PackageWriter>, PackageStoreError>> {
        Box::pin(async move {
            let inner = self.inner.begin_install(package).await?;
            if package.package_type != PackageType::TopLevel {
                return Ok(inner);
            }
            tokio::fs::create_dir_all(&self.bin_dir)
                .await
                .map_err(|error| io_error("creating the executables directory", error))?;
            // Names come from the network: only the counter and a cleaned
            // version go into the file name.
            let version: String = package
                .version
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
                .take(32)
                .collect();
            let n = self.unique.fetch_add(1, Ordering::Relaxed);
            let path = self.bin_dir.join(format!(
                "agent-{}-{}-{n}",
                if version.is_empty() {
                    "unversioned"
                } else {
                    &version
                },
                std::process::id()
            ));
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|error| io_error("staging the executable", error))?;
            Ok(Box::new(ExecutableWriter {
                inner,
                file: Some(file),
                path,
                supervisor: self.supervisor.clone(),
            }) as Box<dyn PackageWriter>)
        })
    }

    fn update_info<'a>(
        &'a self,
        package: &'a PackageInfo,
    ) -> BoxFuture<'a, Result<InstalledPackage, PackageStoreError>> {
        self.inner.update_info(package)
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), PackageStoreError>> {
        // The running executable is a copy: removing the package from the
        // store leaves it running.
        self.inner.remove(name)
    }
}

fn io_error(action: &str, source: std::io::Error) -> PackageStoreError {
    PackageStoreError::Other(format!("{action}: {source}").into())
}

/// Stages a top-level package both in the store and as an executable.
struct ExecutableWriter {
    inner: Box<dyn PackageWriter>,
    file: Option<tokio::fs::File>,
    path: PathBuf,
    supervisor: Supervisor,
}

impl PackageWriter for ExecutableWriter {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), PackageStoreError>> {
        Box::pin(async move {
            self.inner.write(chunk).await?;
            let file = self
                .file
                .as_mut()
                .ok_or_else(|| PackageStoreError::Other("executable already closed".into()))?;
            file.write_all(chunk)
                .await
                .map_err(|error| io_error("writing the executable", error))
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<InstalledPackage, PackageStoreError>> {
        Box::pin(async move {
            let Self {
                inner,
                file,
                path,
                supervisor,
            } = *self;
            if let Err(error) = finish_executable(file, &path).await {
                let _ = inner.abort().await;
                let _ = tokio::fs::remove_file(&path).await;
                return Err(io_error("preparing the executable", error));
            }
            match supervisor.update(path.clone()).await {
                Ok(()) => inner.commit().await,
                Err(reason) => {
                    let _ = inner.abort().await;
                    let _ = tokio::fs::remove_file(&path).await;
                    Err(PackageStoreError::Other(reason.into()))
                }
            }
        })
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<(), PackageStoreError>> {
        Box::pin(async move {
            let Self {
                inner, file, path, ..
            } = *self;
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            inner.abort().await
        })
    }
}

/// Syncs, closes and marks the staged file executable.
async fn finish_executable(file: Option<tokio::fs::File>, path: &PathBuf) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mut file) = file {
        file.flush().await?;
        file.sync_all().await?;
    }
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).await
}

/// Verifies `DownloadableFile.signature` as an Ed25519 signature over the
/// file's SHA-256 digest. Unsigned packages are refused.
#[derive(Debug, Clone)]
pub(crate) struct Ed25519Verifier {
    key: Arc<[u8; 32]>,
}

impl Ed25519Verifier {
    /// From 64 hex digits, or the path of a file holding them.
    pub(crate) fn from_flag(value: &str) -> Result<Self, String> {
        let text = if std::path::Path::new(value).is_file() {
            std::fs::read_to_string(value)
                .map_err(|error| format!("cannot read {value}: {error}"))?
        } else {
            value.to_owned()
        };
        let bytes =
            hex::decode(text.trim()).map_err(|error| format!("package key is not hex: {error}"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "package key must be 32 bytes (64 hex digits)".to_owned())?;
        Ok(Self { key: Arc::new(key) })
    }
}

impl PackageVerifier for Ed25519Verifier {
    fn begin(&self, package: &PackageToVerify<'_>) -> Result<Box<dyn SignatureCheck>, VerifyError> {
        if package.signature.is_empty() {
            return Err(VerifyError::Unsigned);
        }
        Ok(Box::new(Ed25519Check {
            key: Arc::clone(&self.key),
            signature: package.signature.clone(),
        }))
    }
}

struct Ed25519Check {
    key: Arc<[u8; 32]>,
    signature: Bytes,
}

impl SignatureCheck for Ed25519Check {
    fn finish(self: Box<Self>, sha256: &[u8; 32]) -> Result<(), VerifyError> {
        UnparsedPublicKey::new(&ED25519, &self.key[..])
            .verify(sha256, &self.signature)
            .map_err(|_| VerifyError::Rejected("Ed25519 signature does not match".into()))
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    fn package<'a>(signature: &'a Bytes, hash: &'a Bytes) -> PackageToVerify<'a> {
        PackageToVerify {
            name: "",
            package_type: PackageType::TopLevel,
            version: "2",
            download_url: "http://127.0.0.1/p",
            content_hash: hash,
            signature,
        }
    }

    #[test]
    fn ed25519_signatures_over_the_digest_are_checked() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let verifier =
            Ed25519Verifier::from_flag(&hex::encode(pair.public_key().as_ref())).unwrap();
        let digest = [7u8; 32];
        let hash = Bytes::copy_from_slice(&digest);
        let good = Bytes::copy_from_slice(pair.sign(&digest).as_ref());

        let check = verifier.begin(&package(&good, &hash)).unwrap();
        assert!(check.finish(&digest).is_ok());

        let check = verifier.begin(&package(&good, &hash)).unwrap();
        assert!(matches!(
            check.finish(&[8u8; 32]),
            Err(VerifyError::Rejected(_))
        ));

        let unsigned = Bytes::new();
        assert!(matches!(
            verifier.begin(&package(&unsigned, &hash)),
            Err(VerifyError::Unsigned)
        ));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Ed25519Verifier::from_flag("zz").is_err());
        assert!(Ed25519Verifier::from_flag("abcd").is_err());
    }
}
