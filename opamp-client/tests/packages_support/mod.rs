//! Shared helpers for the `packages_*` tests: offer builders and recorders
//! for the syncer callbacks (the in-memory downloader is opamp-testkit's
//! `FakeDownloader`).
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use opamp_client::{DownloadError, InstalledPackage, PackageEvent, PackageSyncError};
use opamp_proto::{
    DownloadableFile, Header, Headers, PackageAvailable, PackageStatus, PackageStatusEnum,
    PackageStatuses, PackageType, PackagesAvailable,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub fn sha256(content: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&Sha256::digest(content))
}

/// An add-on package offer for `content` at `url`.
pub fn package(version: &str, url: &str, content: &[u8]) -> PackageAvailable {
    PackageAvailable {
        r#type: PackageType::Addon as i32,
        version: version.to_owned(),
        file: Some(DownloadableFile {
            download_url: url.to_owned(),
            content_hash: sha256(content),
            signature: Bytes::new(),
            headers: None,
        }),
        // The package hash covers the version and the content (PKG-11).
        hash: sha256(format!("{version}:{}", hex::encode(sha256(content))).as_bytes()),
    }
}

pub fn with_headers(mut package: PackageAvailable, headers: &[(&str, &str)]) -> PackageAvailable {
    if let Some(file) = package.file.as_mut() {
        file.headers = Some(Headers {
            headers: headers
                .iter()
                .map(|(key, value)| Header {
                    key: (*key).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
        });
    }
    package
}

pub fn signed(mut package: PackageAvailable, signature: &[u8]) -> PackageAvailable {
    if let Some(file) = package.file.as_mut() {
        file.signature = Bytes::copy_from_slice(signature);
    }
    package
}

/// An offer whose `all_packages_hash` is derived from the packages.
pub fn offer(packages: &[(&str, PackageAvailable)]) -> PackagesAvailable {
    let mut hasher = Sha256::new();
    for (name, package) in packages {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(&package.hash);
    }
    PackagesAvailable {
        packages: packages
            .iter()
            .map(|(name, package)| ((*name).to_owned(), package.clone()))
            .collect(),
        all_packages_hash: Bytes::copy_from_slice(&hasher.finalize()),
    }
}

/// Collects every snapshot the syncer publishes.
pub struct StatusLog {
    rx: mpsc::UnboundedReceiver<PackageStatuses>,
}

pub fn status_log() -> (impl Fn(PackageStatuses) + Send + Sync + 'static, StatusLog) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        move |statuses| {
            let _ = tx.send(statuses);
        },
        StatusLog { rx },
    )
}

impl StatusLog {
    /// Everything published so far.
    pub fn drain(&mut self) -> Vec<PackageStatuses> {
        let mut out = Vec::new();
        while let Ok(statuses) = self.rx.try_recv() {
            out.push(statuses);
        }
        out
    }

    /// Waits for the next snapshot in which package `name` is `status`.
    pub async fn wait_for_status(&mut self, name: &str, status: PackageStatusEnum) {
        self.wait_for(|s| s.packages.get(name).is_some_and(|p| p.status() == status))
            .await;
    }

    /// Waits for the next snapshot satisfying `predicate`.
    pub async fn wait_for(
        &mut self,
        predicate: impl Fn(&PackageStatuses) -> bool,
    ) -> PackageStatuses {
        loop {
            let statuses = self.rx.recv().await.expect("syncer dropped its callback");
            if predicate(&statuses) {
                return statuses;
            }
        }
    }
}

/// The status of `name` in each snapshot that has it, consecutive repeats
/// removed.
pub fn status_trail(snapshots: &[PackageStatuses], name: &str) -> Vec<PackageStatusEnum> {
    let mut trail: Vec<PackageStatusEnum> = Vec::new();
    for snapshot in snapshots {
        if let Some(status) = snapshot.packages.get(name) {
            let value = status.status();
            if trail.last() != Some(&value) {
                trail.push(value);
            }
        }
    }
    trail
}

pub fn status_of<'a>(statuses: &'a PackageStatuses, name: &str) -> &'a PackageStatus {
    statuses
        .packages
        .get(name)
        .unwrap_or_else(|| panic!("no status for {name:?} in {statuses:?}"))
}

/// A per-package outcome as the tests see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Installed(InstalledPackage),
    Failed { name: String, kind: &'static str },
    Removed(String),
}

/// The variant of a sync error, for matching in assertions.
pub fn error_kind(error: &PackageSyncError) -> &'static str {
    match error {
        PackageSyncError::MissingFile => "MissingFile",
        PackageSyncError::InvalidContentHash(_) => "InvalidContentHash",
        PackageSyncError::UnknownPackageType(_) => "UnknownPackageType",
        PackageSyncError::Download(DownloadError::Status(_)) => "DownloadStatus",
        PackageSyncError::Download(_) => "Download",
        PackageSyncError::Stalled(_) => "Stalled",
        PackageSyncError::TooLarge { .. } => "TooLarge",
        PackageSyncError::LengthMismatch { .. } => "LengthMismatch",
        PackageSyncError::ContentHashMismatch { .. } => "ContentHashMismatch",
        PackageSyncError::Signature(opamp_client::VerifyError::NoVerifier) => "NoVerifier",
        PackageSyncError::Signature(_) => "Signature",
        PackageSyncError::Store(_) => "Store",
        _ => "other",
    }
}

pub fn event_log() -> (
    impl Fn(&PackageEvent) + Send + Sync + 'static,
    Arc<Mutex<Vec<Outcome>>>,
) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    (
        move |event: &PackageEvent| {
            let outcome = match event {
                PackageEvent::Installed(package) => Outcome::Installed(package.clone()),
                PackageEvent::Failed { name, error } => Outcome::Failed {
                    name: name.clone(),
                    kind: error_kind(error),
                },
                PackageEvent::Removed { name } => Outcome::Removed(name.clone()),
                _ => return,
            };
            sink.lock().unwrap().push(outcome);
        },
        log,
    )
}
