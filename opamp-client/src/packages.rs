//! Package management (PKG-*): the syncer that turns a Server's
//! `PackagesAvailable` offer into installed files, and the pluggable parts it
//! drives.
//!
//! - [`PackageStore`]: where packages live. [`FsPackageStore`] keeps them in a
//!   directory with atomic installs; [`MemoryPackageStore`] keeps them in
//!   memory (tests, small embedded agents).
//! - [`Downloader`]: fetches a file by HTTP GET with the offered headers and
//!   yields its body as a stream of chunks.
//! - [`PackageVerifier`]: checks `DownloadableFile.signature`. The default,
//!   [`RejectSignedPackages`], accepts unsigned packages and refuses signed ones,
//!   so a signature is never silently ignored.
//! - [`PackageSyncer`]: runs the download procedure in a background task and
//!   reports every [`PackageStatuses`](opamp_proto::PackageStatuses) snapshot
//!   through a callback.

mod download;
mod fs_store;
mod memory_store;
mod store;
mod syncer;
mod verify;

pub use download::{Download, DownloadError, Downloader};
pub use fs_store::FsPackageStore;
pub use memory_store::MemoryPackageStore;
#[allow(deprecated)]
pub use store::StoreError;
pub use store::{InstalledPackage, PackageInfo, PackageStore, PackageStoreError, PackageWriter};
pub use syncer::{PackageEvent, PackageSyncError, PackageSyncer, PackageSyncerBuilder};
pub use verify::{
    IgnoreSignatures, PackageToVerify, PackageVerifier, RejectSignedPackages, SignatureCheck,
    VerifyError,
};
