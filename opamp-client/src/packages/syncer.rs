//! The package syncer: runs the download procedure (PKG-03..06) for each
//! `PackagesAvailable` offer in a background task.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use opamp_proto::{
    DownloadableFile, PackageAvailable, PackageDownloadDetails, PackageStatus, PackageStatusEnum,
    PackageStatuses, PackageType, PackagesAvailable,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use super::download::{DownloadError, Downloader};
use super::store::{InstalledPackage, PackageInfo, PackageStore, PackageStoreError, PackageWriter};
use super::verify::{
    PackageToVerify, PackageVerifier, RejectSignedPackages, SignatureCheck, VerifyError,
};

/// Default for [`PackageSyncerBuilder::idle_timeout`].
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`PackageSyncerBuilder::max_package_size`]: 1 GiB.
const DEFAULT_MAX_PACKAGE_SIZE: u64 = 1 << 30;
/// Default for [`PackageSyncerBuilder::progress_interval`] (opamp-go uses the same).
const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Why one package could not be installed. Its `Display` text becomes the
/// package's `PackageStatus.error_message`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageSyncError {
    /// The offer has no `file`, or no `download_url` for a file that must be
    /// downloaded.
    #[error("the offer has no file to download")]
    MissingFile,
    /// `content_hash` is not a SHA-256 digest, so the download could not be
    /// verified (PKG-08); nothing is downloaded.
    #[error("offered content_hash has {0} bytes, not a 32-byte SHA-256 digest")]
    InvalidContentHash(usize),
    /// `PackageAvailable.type` is not a known package type.
    #[error("unknown package type {0}")]
    UnknownPackageType(i32),
    /// The download could not start or broke off.
    #[error("download failed: {0}")]
    Download(#[source] DownloadError),
    /// No response or no data arrived for the idle timeout.
    #[error("download stalled: nothing received for {0:?}")]
    Stalled(Duration),
    /// The file is larger than the configured maximum.
    #[error("package is larger than the {limit}-byte limit")]
    TooLarge {
        /// The configured maximum, in bytes.
        limit: u64,
    },
    /// The body length differs from the announced `Content-Length`.
    #[error("download has {received} bytes but {declared} were announced")]
    LengthMismatch {
        /// The announced length.
        declared: u64,
        /// What arrived (at the point the mismatch was detected).
        received: u64,
    },
    /// The file's SHA-256 differs from the offered `content_hash` (PKG-08).
    #[error("content SHA-256 {actual} does not match the offered content_hash {expected}")]
    ContentHashMismatch {
        /// The offered hash, hex.
        expected: String,
        /// The hash of what arrived, hex.
        actual: String,
    },
    /// The signature check refused the package (PKG-09).
    #[error("signature check failed: {0}")]
    Signature(#[source] VerifyError),
    /// The package store failed.
    #[error("package store failed: {0}")]
    Store(#[source] PackageStoreError),
}

/// Something that happened to one package, for [`PackageSyncerBuilder::on_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum PackageEvent {
    /// A package was installed or its metadata updated. For a top-level
    /// package ([`PackageType::TopLevel`]) this is the supervisor's cue to swap
    /// its executable, found at [`InstalledPackage::path`].
    Installed(InstalledPackage),
    /// A package failed; its status is now `InstallFailed`.
    Failed {
        /// Package name.
        name: String,
        /// What went wrong.
        error: PackageSyncError,
    },
    /// A package the Server no longer offers was removed (PKG-05).
    Removed {
        /// Package name.
        name: String,
    },
}

type StatusesCallback = Box<dyn Fn(PackageStatuses) + Send + Sync>;
type EventCallback = Box<dyn Fn(&PackageEvent) + Send + Sync>;

/// Configures and starts a [`PackageSyncer`].
pub struct PackageSyncerBuilder {
    store: Arc<dyn PackageStore>,
    downloader: Arc<dyn Downloader>,
    verifier: Arc<dyn PackageVerifier>,
    idle_timeout: Duration,
    max_package_size: u64,
    progress_interval: Duration,
    on_statuses: Option<StatusesCallback>,
    on_event: Option<EventCallback>,
}

impl std::fmt::Debug for PackageSyncerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageSyncerBuilder")
            .field("idle_timeout", &self.idle_timeout)
            .field("max_package_size", &self.max_package_size)
            .field("progress_interval", &self.progress_interval)
            .finish_non_exhaustive()
    }
}

impl PackageSyncerBuilder {
    opamp_transport::builder_setters! {
        /// Sets the signature verifier. Default: [`RejectSignedPackages`].
        pub fn verifier(verifier: Arc<dyn PackageVerifier>) => verifier = verifier;

        /// How long a download may go without a response or a new chunk before
        /// it fails with [`PackageSyncError::Stalled`]. Default 30 s.
        pub fn idle_timeout(idle_timeout: Duration) => idle_timeout = idle_timeout;

        /// The largest file accepted, in bytes; larger ones fail with
        /// [`PackageSyncError::TooLarge`], as soon as the announced length or the
        /// received bytes exceed it. Default 1 GiB.
        pub fn max_package_size(max_package_size: u64) => max_package_size = max_package_size;

        /// The least time between two progress snapshots of one download
        /// (PKG-15). Default 10 s. Each carries `download_percent` (0 to 100 of
        /// the announced length, 0 when none was announced) and
        /// `download_bytes_per_second` (the average since the request started).
        /// A `Downloading` snapshot with both at 0 is published as the download
        /// starts.
        pub fn progress_interval(progress_interval: Duration)
            => progress_interval = progress_interval;

        /// Receives every new [`PackageStatuses`] snapshot, in order; a snapshot
        /// equal to the previous one is not repeated. The client core hands these
        /// to its package-statuses setter. Runs on the syncer's task, except the
        /// first call (the store's view), which runs inside
        /// [`start`](Self::start): it must return quickly and must not block.
        pub fn on_statuses(callback: impl Fn(PackageStatuses) + Send + Sync + 'static)
            => on_statuses = Some(Box::new(callback));

        /// Receives per-package outcomes with typed errors. Runs on the syncer's
        /// task: it must return quickly and must not block.
        pub fn on_event(callback: impl Fn(&PackageEvent) + Send + Sync + 'static)
            => on_event = Some(Box::new(callback));
    }

    /// Reads the store, publishes its statuses as the first snapshot (so a
    /// restarted agent reports what it has without downloading anything), and
    /// spawns the background task. Must be called within a tokio runtime.
    pub async fn start(self) -> Result<PackageSyncer, PackageStoreError> {
        let installed = self.store.installed().await?;
        let all_packages_hash = self.store.all_packages_hash().await?;
        let initial = PackageStatuses {
            packages: installed
                .iter()
                .map(|package| (package.info.name.clone(), installed_status(package)))
                .collect(),
            server_provided_all_packages_hash: all_packages_hash,
            error_message: String::new(),
        };
        let shared = Arc::new(Shared {
            options: self,
            latest: Mutex::new(None),
        });
        shared.publish(&initial);
        let (offers_tx, offers_rx) = watch::channel(OfferSlot::default());
        let (done_tx, done_rx) = watch::channel(0);
        tokio::spawn(run_worker(Arc::clone(&shared), offers_rx, done_tx));
        Ok(PackageSyncer {
            handle: Arc::new(Handle {
                offers: offers_tx,
                done: done_rx,
                shared,
            }),
        })
    }
}

/// Turns `PackagesAvailable` offers into installed packages, in a background
/// task, reporting [`PackageStatuses`] snapshots as it goes.
///
/// For each offer:
/// 1. PKG-04: if the store's saved `all_packages_hash` equals the offered one
///    and every offered package is installed with its offered hash, there is
///    nothing to do; the statuses are reported as they are.
/// 2. PKG-05: installed packages the offer does not name are removed.
/// 3. A snapshot lists every offered package: `Installed` if its hash matches
///    what is installed, else `InstallPending`.
/// 4. Packages are processed one at a time, in name order. If the installed
///    file already has the offered `content_hash`, only the metadata changes
///    (`Installing` → `Installed`, no download, PKG-06). Otherwise the
///    verifier may refuse the package up front; then it is `Downloading` (GET
///    with the offered headers, with [`PackageDownloadDetails`] at most once
///    per progress interval), its SHA-256 is checked against `content_hash`
///    and its signature verified **before** anything is installed, then
///    `Installing` and `Installed`. Any failure makes it `InstallFailed` with
///    an `error_message` and leaves its installed version (if any) untouched;
///    the other packages go on.
/// 5. Only when every package is installed is `all_packages_hash` saved, so a
///    repeated offer after a failure (or after a restart) retries.
///
/// Every snapshot made for an offer carries its `all_packages_hash` as
/// `server_provided_all_packages_hash` (PKG-13): the Server learns at once
/// that the offer arrived and does not resend it during a long download
/// (PKG-14). Per-package outcomes tell whether it succeeded. Errors not tied
/// to one package (reading the store, removing a package, saving the hash) go
/// in `PackageStatuses.error_message` (PKG-22).
///
/// **A new offer while a sync runs** supersedes it: the running download is
/// abandoned (its staged file deleted, nothing installed) and the newest offer
/// is processed next; offers in between are skipped. Commits and removals are
/// never interrupted. An offer whose `all_packages_hash` equals the one being
/// processed or waiting is a duplicate and is ignored, so a Server resending
/// the same offer does not restart downloads.
///
/// The handle is cheap to clone; the task ends when the last clone is dropped
/// (abandoning any download as above).
#[derive(Clone)]
pub struct PackageSyncer {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for PackageSyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageSyncer")
            .field("offers", &self.handle.offers.borrow().seq)
            .field("done", &*self.handle.done.borrow())
            .finish_non_exhaustive()
    }
}

impl PackageSyncer {
    /// Starts configuring a syncer over `store`, downloading with `downloader`.
    pub fn builder(
        store: Arc<dyn PackageStore>,
        downloader: Arc<dyn Downloader>,
    ) -> PackageSyncerBuilder {
        PackageSyncerBuilder {
            store,
            downloader,
            verifier: Arc::new(RejectSignedPackages),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_package_size: DEFAULT_MAX_PACKAGE_SIZE,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            on_statuses: None,
            on_event: None,
        }
    }

    /// Hands over a `PackagesAvailable` offer; returns at once. Returns
    /// `false` if it was ignored as a duplicate of the offer being processed
    /// or waiting (same non-empty `all_packages_hash`).
    pub fn offer(&self, available: PackagesAvailable) -> bool {
        let done = *self.handle.done.borrow();
        self.handle.offers.send_if_modified(move |slot| {
            let busy = slot.seq > done;
            let duplicate = !available.all_packages_hash.is_empty()
                && slot
                    .offer
                    .as_ref()
                    .is_some_and(|o| o.all_packages_hash == available.all_packages_hash);
            if busy && duplicate {
                tracing::debug!("ignoring a package offer identical to the one in progress");
                return false;
            }
            slot.seq += 1;
            slot.offer = Some(Arc::new(available));
            true
        })
    }

    /// The latest snapshot (what the client should report now).
    pub fn statuses(&self) -> PackageStatuses {
        self.handle.shared.latest().clone().unwrap_or_default()
    }

    /// Waits until every offer handed over so far has been processed (or
    /// superseded).
    pub async fn wait_idle(&self) {
        let target = self.handle.offers.borrow().seq;
        let mut done = self.handle.done.clone();
        // An error means the task is gone, so nothing is running either.
        let _ = done.wait_for(|done| *done >= target).await;
    }
}

struct Handle {
    offers: watch::Sender<OfferSlot>,
    done: watch::Receiver<u64>,
    shared: Arc<Shared>,
}

/// The newest offer and its sequence number (0 = none yet).
#[derive(Clone, Default)]
struct OfferSlot {
    seq: u64,
    offer: Option<Arc<PackagesAvailable>>,
}

struct Shared {
    /// What the builder was given, kept as it is.
    options: PackageSyncerBuilder,
    latest: Mutex<Option<PackageStatuses>>,
}

impl Shared {
    fn latest(&self) -> MutexGuard<'_, Option<PackageStatuses>> {
        // Only whole snapshots are stored, so a poisoned value is still whole.
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, statuses: &PackageStatuses) {
        {
            let mut latest = self.latest();
            if latest.as_ref() == Some(statuses) {
                return;
            }
            *latest = Some(statuses.clone());
        }
        if let Some(callback) = &self.options.on_statuses {
            callback(statuses.clone());
        }
    }

    fn event(&self, event: PackageEvent) {
        match &event {
            PackageEvent::Installed(package) => {
                tracing::info!(name = %package.info.name, version = %package.info.version, "package installed");
            }
            PackageEvent::Failed { name, error } => {
                tracing::warn!(%name, %error, "package install failed");
            }
            PackageEvent::Removed { name } => tracing::info!(%name, "package removed"),
        }
        if let Some(callback) = &self.options.on_event {
            callback(&event);
        }
    }
}

async fn run_worker(
    shared: Arc<Shared>,
    mut offers: watch::Receiver<OfferSlot>,
    done: watch::Sender<u64>,
) {
    let mut processed = 0;
    loop {
        let slot = offers.borrow_and_update().clone();
        if slot.seq == processed {
            if offers.changed().await.is_err() {
                return;
            }
            continue;
        }
        if let Some(offer) = slot.offer
            && sync_offer(&shared, &offer, &mut offers).await.is_err()
        {
            tracing::debug!("package sync superseded by a newer offer");
        }
        processed = slot.seq;
        done.send_replace(processed);
    }
}

/// The running sync gave way to a newer offer (or the syncer was dropped).
struct Superseded;

enum InstallError {
    Superseded,
    Failed(PackageSyncError),
}

impl From<PackageSyncError> for InstallError {
    fn from(error: PackageSyncError) -> Self {
        Self::Failed(error)
    }
}

fn installed_status(package: &InstalledPackage) -> PackageStatus {
    // Everything in the store came from a Server offer, so "offered" is what
    // was installed (PKG-19).
    PackageStatus {
        name: package.info.name.clone(),
        agent_has_version: package.info.version.clone(),
        agent_has_hash: package.info.hash.clone(),
        server_offered_version: package.info.version.clone(),
        server_offered_hash: package.info.hash.clone(),
        status: PackageStatusEnum::Installed as i32,
        error_message: String::new(),
        download_details: None,
    }
}

fn is_up_to_date(installed: Option<&InstalledPackage>, offered: &PackageAvailable) -> bool {
    installed.is_some_and(|package| {
        package.info.hash == offered.hash && package.info.package_type as i32 == offered.r#type
    })
}

/// Updates one package's status in the snapshot and publishes it.
struct Reporter<'a> {
    shared: &'a Shared,
    statuses: &'a mut PackageStatuses,
    name: &'a str,
}

impl Reporter<'_> {
    fn set(&mut self, status: PackageStatusEnum, details: Option<PackageDownloadDetails>) {
        if let Some(entry) = self.statuses.packages.get_mut(self.name) {
            entry.status = status as i32;
            entry.error_message.clear();
            // PKG-21: details only while downloading.
            entry.download_details = details.filter(|_| status == PackageStatusEnum::Downloading);
        }
        self.shared.publish(self.statuses);
    }
}

async fn sync_offer(
    shared: &Shared,
    offer: &PackagesAvailable,
    cancel: &mut watch::Receiver<OfferSlot>,
) -> Result<(), Superseded> {
    let installed: BTreeMap<String, InstalledPackage> = match shared.options.store.installed().await
    {
        Ok(list) => list
            .into_iter()
            .map(|package| (package.info.name.clone(), package))
            .collect(),
        Err(error) => {
            let mut statuses = shared.latest().clone().unwrap_or_default();
            statuses.error_message = format!("cannot read the package store: {error}");
            shared.publish(&statuses);
            return Ok(());
        }
    };
    let local_hash = shared
        .options
        .store
        .all_packages_hash()
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the saved all_packages_hash");
            Bytes::new()
        });
    let mut statuses = PackageStatuses {
        server_provided_all_packages_hash: offer.all_packages_hash.clone(),
        ..PackageStatuses::default()
    };

    // PKG-04: nothing changed since the last complete sync.
    if !offer.all_packages_hash.is_empty()
        && local_hash == offer.all_packages_hash
        && offer
            .packages
            .iter()
            .all(|(name, offered)| is_up_to_date(installed.get(name), offered))
    {
        statuses.packages = installed
            .iter()
            .map(|(name, package)| (name.clone(), installed_status(package)))
            .collect();
        shared.publish(&statuses);
        return Ok(());
    }

    // PKG-05: delete what is no longer offered.
    let mut problems = Vec::new();
    for (name, package) in &installed {
        if offer.packages.contains_key(name) {
            continue;
        }
        match shared.options.store.remove(name).await {
            Ok(()) => shared.event(PackageEvent::Removed { name: name.clone() }),
            Err(error) => {
                problems.push(format!("could not remove package {name:?}: {error}"));
                statuses
                    .packages
                    .insert(name.clone(), installed_status(package));
            }
        }
    }

    let mut work = Vec::new();
    for (name, offered) in &offer.packages {
        let have = installed.get(name);
        let status = if is_up_to_date(have, offered) {
            PackageStatusEnum::Installed
        } else {
            work.push((name, offered));
            PackageStatusEnum::InstallPending
        };
        statuses.packages.insert(
            name.clone(),
            PackageStatus {
                name: name.clone(),
                agent_has_version: have.map(|p| p.info.version.clone()).unwrap_or_default(),
                agent_has_hash: have.map(|p| p.info.hash.clone()).unwrap_or_default(),
                server_offered_version: offered.version.clone(),
                server_offered_hash: offered.hash.clone(),
                status: status as i32,
                error_message: String::new(),
                download_details: None,
            },
        );
    }
    statuses.error_message = problems.join("; ");
    let mut all_installed = problems.is_empty();
    shared.publish(&statuses);

    for (name, offered) in work {
        if !matches!(cancel.has_changed(), Ok(false)) {
            return Err(Superseded);
        }
        let mut reporter = Reporter {
            shared,
            statuses: &mut statuses,
            name,
        };
        let outcome = install_one(
            shared,
            name,
            offered,
            installed.get(name),
            &mut reporter,
            cancel,
        )
        .await;
        let Some(entry) = statuses.packages.get_mut(name) else {
            continue;
        };
        entry.download_details = None;
        match outcome {
            Ok(package) => {
                entry.status = PackageStatusEnum::Installed as i32;
                entry.error_message.clear();
                entry.agent_has_version = package.info.version.clone();
                entry.agent_has_hash = package.info.hash.clone();
                shared.event(PackageEvent::Installed(package));
            }
            Err(InstallError::Superseded) => return Err(Superseded),
            Err(InstallError::Failed(error)) => {
                all_installed = false;
                entry.status = PackageStatusEnum::InstallFailed as i32;
                entry.error_message = error.to_string();
                shared.event(PackageEvent::Failed {
                    name: name.clone(),
                    error,
                });
            }
        }
        shared.publish(&statuses);
    }

    if all_installed
        && let Err(error) = shared
            .options
            .store
            .set_all_packages_hash(offer.all_packages_hash.clone())
            .await
    {
        statuses.error_message = format!("could not save all_packages_hash: {error}");
        shared.publish(&statuses);
    }
    Ok(())
}

async fn install_one(
    shared: &Shared,
    name: &str,
    offered: &PackageAvailable,
    have: Option<&InstalledPackage>,
    reporter: &mut Reporter<'_>,
    cancel: &mut watch::Receiver<OfferSlot>,
) -> Result<InstalledPackage, InstallError> {
    let file = offered.file.as_ref().ok_or(PackageSyncError::MissingFile)?;
    let expected: [u8; 32] = file
        .content_hash
        .as_ref()
        .try_into()
        .map_err(|_| PackageSyncError::InvalidContentHash(file.content_hash.len()))?;
    let package_type = PackageType::try_from(offered.r#type)
        .map_err(|_| PackageSyncError::UnknownPackageType(offered.r#type))?;
    let info = PackageInfo {
        name: name.to_owned(),
        package_type,
        version: offered.version.clone(),
        hash: offered.hash.clone(),
        content_hash: file.content_hash.clone(),
    };

    // PKG-06: same file content, only the package metadata changed.
    if have.is_some_and(|p| p.info.content_hash == file.content_hash) {
        reporter.set(PackageStatusEnum::Installing, None);
        return shared
            .options
            .store
            .update_info(&info)
            .await
            .map_err(|e| PackageSyncError::Store(e).into());
    }
    if file.download_url.is_empty() {
        return Err(PackageSyncError::MissingFile.into());
    }
    // Refuse before downloading if the verifier already knows it will.
    let check = shared
        .options
        .verifier
        .begin(&PackageToVerify {
            name,
            package_type,
            version: &offered.version,
            download_url: &file.download_url,
            content_hash: &file.content_hash,
            signature: &file.signature,
        })
        .map_err(PackageSyncError::Signature)?;

    reporter.set(
        PackageStatusEnum::Downloading,
        Some(PackageDownloadDetails {
            download_percent: 0.0,
            download_bytes_per_second: 0.0,
        }),
    );
    let writer = download(shared, &info, file, &expected, check, reporter, cancel).await?;
    reporter.set(PackageStatusEnum::Installing, None);
    writer
        .commit()
        .await
        .map_err(|e| PackageSyncError::Store(e).into())
}

/// Downloads into a staged writer; on success the content hash and signature
/// are verified and the writer is ready to commit, on failure it was aborted.
async fn download(
    shared: &Shared,
    info: &PackageInfo,
    file: &DownloadableFile,
    expected: &[u8; 32],
    check: Box<dyn SignatureCheck>,
    reporter: &mut Reporter<'_>,
    cancel: &mut watch::Receiver<OfferSlot>,
) -> Result<Box<dyn PackageWriter>, InstallError> {
    let started = Instant::now();
    let headers = file
        .headers
        .as_ref()
        .map(|h| h.headers.as_slice())
        .unwrap_or_default();
    let response = tokio::select! {
        biased;
        _ = cancel.changed() => return Err(InstallError::Superseded),
        response = timeout(
            shared.options.idle_timeout,
            shared.options.downloader.download(&file.download_url, headers),
        ) => response
            .map_err(|_| PackageSyncError::Stalled(shared.options.idle_timeout))?
            .map_err(PackageSyncError::Download)?,
    };
    if response
        .content_length
        .is_some_and(|length| length > shared.options.max_package_size)
    {
        return Err(PackageSyncError::TooLarge {
            limit: shared.options.max_package_size,
        }
        .into());
    }

    let mut writer = shared
        .options
        .store
        .begin_install(info)
        .await
        .map_err(PackageSyncError::Store)?;
    let received = receive(
        shared,
        response,
        writer.as_mut(),
        expected,
        check,
        reporter,
        cancel,
        started,
    )
    .await;
    match received {
        Ok(()) => Ok(writer),
        Err(error) => {
            if let Err(abort_error) = writer.abort().await {
                tracing::warn!(name = %info.name, error = %abort_error, "could not discard a failed download");
            }
            Err(error)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    shared: &Shared,
    response: super::download::Download,
    writer: &mut dyn PackageWriter,
    expected: &[u8; 32],
    mut check: Box<dyn SignatureCheck>,
    reporter: &mut Reporter<'_>,
    cancel: &mut watch::Receiver<OfferSlot>,
    started: Instant,
) -> Result<(), InstallError> {
    let declared = response.content_length;
    let mut body = response.body;
    let mut received: u64 = 0;
    let mut hasher = Sha256::new();
    let mut last_report = started;
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.changed() => return Err(InstallError::Superseded),
            next = timeout(shared.options.idle_timeout, body.next()) => next,
        };
        let chunk = match next {
            Err(_) => return Err(PackageSyncError::Stalled(shared.options.idle_timeout).into()),
            Ok(None) => break,
            Ok(Some(Err(error))) => return Err(PackageSyncError::Download(error).into()),
            Ok(Some(Ok(chunk))) => chunk,
        };
        received = received.saturating_add(chunk.len() as u64);
        if received > shared.options.max_package_size {
            return Err(PackageSyncError::TooLarge {
                limit: shared.options.max_package_size,
            }
            .into());
        }
        if let Some(declared) = declared.filter(|declared| received > *declared) {
            return Err(PackageSyncError::LengthMismatch { declared, received }.into());
        }
        hasher.update(&chunk);
        check.update(&chunk);
        writer
            .write(&chunk)
            .await
            .map_err(PackageSyncError::Store)?;

        // PKG-15: progress at a bounded rate.
        let now = Instant::now();
        if now.duration_since(last_report) >= shared.options.progress_interval {
            last_report = now;
            reporter.set(
                PackageStatusEnum::Downloading,
                Some(download_details(
                    received,
                    declared,
                    now.duration_since(started),
                )),
            );
        }
    }
    if let Some(declared) = declared.filter(|declared| received != *declared) {
        return Err(PackageSyncError::LengthMismatch { declared, received }.into());
    }
    let actual: [u8; 32] = hasher.finalize().into();
    if actual != *expected {
        return Err(PackageSyncError::ContentHashMismatch {
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        }
        .into());
    }
    check.finish(&actual).map_err(PackageSyncError::Signature)?;
    Ok(())
}

/// Percent is 0..=100 of the announced length (0 when no length was
/// announced); bytes per second is the average since the request started.
fn download_details(
    received: u64,
    declared: Option<u64>,
    elapsed: Duration,
) -> PackageDownloadDetails {
    let download_percent = match declared {
        Some(length) if length > 0 => (received as f64 * 100.0 / length as f64).min(100.0),
        _ => 0.0,
    };
    let seconds = elapsed.as_secs_f64();
    let download_bytes_per_second = if seconds > 0.0 {
        received as f64 / seconds
    } else {
        0.0
    };
    PackageDownloadDetails {
        download_percent,
        download_bytes_per_second,
    }
}
