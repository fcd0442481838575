//! Shared helpers for the `packages_*` tests: an in-memory downloader with
//! scripted bodies, offer builders, and recorders for the syncer callbacks.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt as _};
use opamp_client::{
    Download, DownloadError, Downloader, InstalledPackage, PackageEvent, PackageSyncError,
};
use opamp_proto::{
    DownloadableFile, Header, Headers, PackageAvailable, PackageStatus, PackageStatusEnum,
    PackageStatuses, PackageType, PackagesAvailable,
};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};

pub fn sha256(content: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&Sha256::digest(content))
}

/// One step of a scripted response body.
#[derive(Clone)]
pub enum Step {
    Chunk(Bytes),
    /// Waits (tokio time, so paused-time tests control it).
    Sleep(Duration),
    /// Waits until the test notifies.
    Gate(Arc<Notify>),
    /// Never yields again.
    Stall,
    /// Fails the body.
    Fail,
}

#[derive(Clone)]
pub enum Reply {
    Body {
        content_length: Option<u64>,
        steps: Vec<Step>,
    },
    Status(u16),
    /// The response never arrives.
    NeverAnswer,
}

impl Reply {
    /// `content` in three chunks, with a correct length.
    pub fn content(content: &[u8]) -> Self {
        let third = content.len().div_ceil(3).max(1);
        Reply::Body {
            content_length: Some(content.len() as u64),
            steps: content
                .chunks(third)
                .map(|chunk| Step::Chunk(Bytes::copy_from_slice(chunk)))
                .collect(),
        }
    }

    /// A body announced as `content_length` bytes that stops after `part`.
    pub fn stalling_after(part: &'static [u8], content_length: u64) -> Self {
        Reply::Body {
            content_length: Some(content_length),
            steps: vec![Step::Chunk(Bytes::from_static(part)), Step::Stall],
        }
    }
}

/// A downloader answering from a table of URL → reply, recording requests.
#[derive(Default)]
pub struct FakeDownloader {
    replies: Mutex<HashMap<String, Reply>>,
    requests: Mutex<Vec<(String, Vec<Header>)>>,
}

impl FakeDownloader {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn reply(&self, url: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(url.to_owned(), reply);
    }

    pub fn serve(&self, url: &str, content: &[u8]) {
        self.reply(url, Reply::content(content));
    }

    pub fn requests(&self) -> Vec<(String, Vec<Header>)> {
        self.requests.lock().unwrap().clone()
    }

    pub fn urls(&self) -> Vec<String> {
        self.requests().into_iter().map(|(url, _)| url).collect()
    }
}

fn scripted(
    steps: Vec<Step>,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, DownloadError>> {
    stream::unfold(VecDeque::from(steps), |mut steps| async move {
        loop {
            match steps.pop_front()? {
                Step::Chunk(chunk) => return Some((Ok(chunk), steps)),
                Step::Sleep(duration) => tokio::time::sleep(duration).await,
                Step::Gate(gate) => gate.notified().await,
                Step::Stall => futures_util::future::pending::<()>().await,
                Step::Fail => {
                    return Some((
                        Err(DownloadError::Transport("connection reset".into())),
                        VecDeque::new(),
                    ));
                }
            }
        }
    })
    .boxed()
}

impl Downloader for FakeDownloader {
    fn download<'a>(
        &'a self,
        url: &'a str,
        headers: &'a [Header],
    ) -> BoxFuture<'a, Result<Download, DownloadError>> {
        self.requests
            .lock()
            .unwrap()
            .push((url.to_owned(), headers.to_vec()));
        let reply = self.replies.lock().unwrap().get(url).cloned();
        Box::pin(async move {
            match reply {
                None | Some(Reply::Status(404)) => Err(DownloadError::Status(404)),
                Some(Reply::Status(status)) => Err(DownloadError::Status(status)),
                Some(Reply::NeverAnswer) => futures_util::future::pending().await,
                Some(Reply::Body {
                    content_length,
                    steps,
                }) => Ok(Download {
                    content_length,
                    body: scripted(steps),
                }),
            }
        })
    }
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
