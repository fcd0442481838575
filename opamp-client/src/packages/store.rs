//! The package-store abstraction the syncer installs into.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use opamp_proto::PackageType;

/// What identifies one package version, as the Server offered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageInfo {
    /// The key of `PackagesAvailable.packages`. May be empty for the lone
    /// top-level package (PKG-02).
    pub name: String,
    /// Top-level (the agent itself) or add-on.
    pub package_type: PackageType,
    /// `PackageAvailable.version`.
    pub version: String,
    /// `PackageAvailable.hash`: the Server's hash of the whole package.
    pub hash: Bytes,
    /// `DownloadableFile.content_hash`: the SHA-256 of the file, which the
    /// syncer has checked before the package reaches the store.
    pub content_hash: Bytes,
}

/// A package the store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledPackage {
    /// Name, version and hashes.
    pub info: PackageInfo,
    /// Where the file is, for stores that keep files on disk. A supervisor
    /// runs or unpacks the top-level package from here.
    pub path: Option<PathBuf>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageStoreError {
    /// A file-system operation failed.
    #[error("package store I/O failed while {action}: {source}")]
    Io {
        /// What the store was doing.
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store's own metadata could not be understood.
    #[error("package store metadata is corrupt: {0}")]
    Corrupt(String),
    /// The operation needs an installed package and there is none by that name.
    #[error("package {0:?} is not installed")]
    NotInstalled(String),
    /// An error from a custom store implementation.
    #[error("package store failed: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The old name of [`PackageStoreError`]; `StoreError` is the server's
/// agent-store error.
#[deprecated(since = "0.1.0", note = "renamed to `PackageStoreError`")]
pub type StoreError = PackageStoreError;

impl PackageStoreError {
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            action: action.into(),
            source,
        }
    }
}

/// Persistent storage for installed packages.
///
/// The syncer calls these methods from one background task, one at a time,
/// and re-reads [`installed`](PackageStore::installed) at the start of every
/// offer, so a store need not cache anything for it. Installs are staged:
/// [`begin_install`](PackageStore::begin_install) returns a writer that
/// receives the file chunk by chunk while it downloads; only
/// [`PackageWriter::commit`] makes it visible, after the syncer has verified
/// the content hash and signature. A writer dropped without commit must leave
/// the store as it was.
pub trait PackageStore: Send + Sync {
    /// Every installed package.
    fn installed(&self) -> BoxFuture<'_, Result<Vec<InstalledPackage>, PackageStoreError>>;

    /// The `all_packages_hash` saved by the last fully successful sync; empty
    /// if none was saved.
    fn all_packages_hash(&self) -> BoxFuture<'_, Result<Bytes, PackageStoreError>>;

    /// Saves the `all_packages_hash` of an offer that is now fully installed.
    fn set_all_packages_hash(&self, hash: Bytes) -> BoxFuture<'_, Result<(), PackageStoreError>>;

    /// Starts staging a new file for `package`, replacing any installed
    /// package of the same name once committed.
    fn begin_install<'a>(
        &'a self,
        package: &'a PackageInfo,
    ) -> BoxFuture<'a, Result<Box<dyn PackageWriter>, PackageStoreError>>;

    /// Replaces the metadata of an installed package whose file content is
    /// unchanged (same `content_hash`), without downloading again.
    fn update_info<'a>(
        &'a self,
        package: &'a PackageInfo,
    ) -> BoxFuture<'a, Result<InstalledPackage, PackageStoreError>>;

    /// Removes a package and its file. Removing a package that is not
    /// installed succeeds.
    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), PackageStoreError>>;
}

/// A staged install: receives the file, then is committed or aborted.
pub trait PackageWriter: Send {
    /// Appends one chunk of the file.
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), PackageStoreError>>;

    /// Makes the staged file the installed package, atomically.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<InstalledPackage, PackageStoreError>>;

    /// Discards the staged file; the store is left as it was.
    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<(), PackageStoreError>>;
}
