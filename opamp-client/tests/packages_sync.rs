//! Package syncer behaviour (PKG-*) over the in-memory store and a scripted
//! downloader.

mod packages_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use opamp_client::{
    IgnoreSignatures, InstalledPackage, MemoryPackageStore, PackageInfo, PackageStore,
    PackageStoreError, PackageSyncer, PackageToVerify, PackageVerifier, PackageWriter,
    SignatureCheck, VerifyError,
};
use opamp_proto::{PackageStatusEnum, PackageStatuses, PackageType};
use opamp_testkit::{FakeDownloader, Reply, Step};
use packages_support::*;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use PackageStatusEnum::{Downloading, InstallFailed, InstallPending, Installed, Installing};

struct Harness {
    syncer: PackageSyncer,
    store: MemoryPackageStore,
    downloader: Arc<FakeDownloader>,
    log: StatusLog,
    events: Arc<std::sync::Mutex<Vec<Outcome>>>,
}

impl Harness {
    fn outcomes(&self) -> Vec<Outcome> {
        self.events.lock().unwrap().clone()
    }

    async fn sync(&self, offer: opamp_proto::PackagesAvailable) {
        self.syncer.offer(offer);
        self.syncer.wait_idle().await;
    }

    /// Serves each `(name, version, url, content)` package at its URL, then
    /// syncs an offer of them all; returns the offer.
    async fn serve_and_sync(
        &self,
        packages: &[(&str, &str, &str, &[u8])],
    ) -> opamp_proto::PackagesAvailable {
        let mut offered = Vec::new();
        for &(name, version, url, content) in packages {
            self.downloader.serve(url, content);
            offered.push((name, package(version, url, content)));
        }
        let offered = offer(&offered);
        self.sync(offered.clone()).await;
        offered
    }
}

async fn start_with(
    store: MemoryPackageStore,
    configure: impl FnOnce(opamp_client::PackageSyncerBuilder) -> opamp_client::PackageSyncerBuilder,
) -> Harness {
    let downloader = FakeDownloader::new();
    let (on_statuses, log) = status_log();
    let (on_event, events) = event_log();
    let builder = PackageSyncer::builder(Arc::new(store.clone()), downloader.clone())
        .on_statuses(on_statuses)
        .on_event(on_event);
    let syncer = configure(builder).start().await.expect("store readable");
    Harness {
        syncer,
        store,
        downloader,
        log,
        events,
    }
}

async fn start_with_idle_timeout(idle_timeout: Duration) -> Harness {
    start_with(MemoryPackageStore::new(), |builder| {
        builder.idle_timeout(idle_timeout)
    })
    .await
}

async fn start() -> Harness {
    start_with(MemoryPackageStore::new(), |builder| builder).await
}

fn installed_names(store: &MemoryPackageStore) -> Vec<String> {
    let mut names: Vec<String> = futures_util::FutureExt::now_or_never(store.installed())
        .expect("memory store answers at once")
        .expect("memory store never fails")
        .into_iter()
        .map(|p| p.info.name)
        .collect();
    names.sort();
    names
}

fn stored_hash(store: &MemoryPackageStore) -> Bytes {
    futures_util::FutureExt::now_or_never(store.all_packages_hash())
        .expect("memory store answers at once")
        .expect("memory store never fails")
}

#[tokio::test]
async fn pkg03_pkg06_offered_packages_are_downloaded_and_installed() {
    let mut h = start().await;
    h.downloader.serve("mem://a", b"alpha");
    h.downloader.serve("mem://b", b"bravo");
    let offer = offer(&[
        (
            "a",
            with_headers(
                package("1.0", "mem://a", b"alpha"),
                &[("authorization", "Bearer t")],
            ),
        ),
        ("b", package("2.0", "mem://b", b"bravo")),
    ]);
    h.sync(offer.clone()).await;

    assert_eq!(h.store.content("a").as_deref(), Some(&b"alpha"[..]));
    assert_eq!(h.store.content("b").as_deref(), Some(&b"bravo"[..]));
    // PKG-06: a GET of download_url with the offered headers.
    let requests = h.downloader.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].0, "mem://a");
    assert_eq!(requests[0].1.len(), 1);
    assert_eq!(requests[0].1[0].key, "authorization");
    assert_eq!(requests[0].1[0].value, "Bearer t");
    assert!(requests[1].1.is_empty());

    let last = h.log.drain().pop().expect("snapshots published");
    assert_eq!(last, h.syncer.statuses());
    for (name, version) in [("a", "1.0"), ("b", "2.0")] {
        let status = status_of(&last, name);
        assert_eq!(status.status(), Installed);
        // PKG-18/19: has and offered both set once installed.
        assert_eq!(status.agent_has_version, version);
        assert_eq!(status.agent_has_hash, offer.packages[name].hash);
        assert_eq!(status.server_offered_version, version);
        assert_eq!(status.server_offered_hash, offer.packages[name].hash);
        assert!(status.error_message.is_empty());
        assert!(status.download_details.is_none());
    }
    assert!(
        last.error_message.is_empty(),
        "PKG-22: no error, no message"
    );
    // Everything succeeded, so the hash is saved for the PKG-04 shortcut.
    assert_eq!(stored_hash(&h.store), offer.all_packages_hash);
    assert_eq!(h.outcomes().len(), 2);
}

#[tokio::test]
async fn pkg04_unchanged_all_packages_hash_does_no_work() {
    let mut h = start().await;
    let offer = h.serve_and_sync(&[("a", "1.0", "mem://a", b"alpha")]).await;
    assert_eq!(h.downloader.urls().len(), 1);
    // A package installed locally, not from this Server: the all-packages
    // hash does not cover it (PKG-11), and step 1 ends the procedure before
    // the removal step could touch it.
    h.store.insert(
        opamp_client::PackageInfo {
            name: "local".into(),
            package_type: PackageType::Addon,
            version: "0".into(),
            hash: Bytes::from_static(b"local"),
            content_hash: sha256(b"local"),
        },
        Bytes::from_static(b"local"),
    );
    h.log.drain();

    assert!(h.syncer.offer(offer.clone()), "idle syncer takes the offer");
    h.syncer.wait_idle().await;

    assert_eq!(h.downloader.urls().len(), 1, "no second download");
    assert_eq!(
        installed_names(&h.store),
        ["a", "local"],
        "step 1 ends the procedure"
    );
    let after = h.syncer.statuses();
    assert_eq!(
        after.server_provided_all_packages_hash,
        offer.all_packages_hash
    );
    assert_eq!(status_of(&after, "a").status(), Installed);
    assert!(
        h.log
            .drain()
            .iter()
            .all(|s| s.packages.values().all(|p| p.status() == Installed)),
        "nothing but Installed is reported"
    );
    assert_eq!(h.outcomes().len(), 1, "no new install");
}

#[tokio::test]
async fn pkg04_shortcut_requires_every_package_installed() {
    let h = start().await;
    let offer = h
        .serve_and_sync(&[
            ("a", "1.0", "mem://a", b"alpha"),
            ("b", "1.0", "mem://b", b"bravo"),
        ])
        .await;
    // Someone deleted a package behind the syncer's back; the saved hash
    // still matches but the store does not.
    futures_util::FutureExt::now_or_never(h.store.remove("b"))
        .unwrap()
        .unwrap();

    h.sync(offer).await;

    assert_eq!(h.downloader.urls(), ["mem://a", "mem://b", "mem://b"]);
    assert_eq!(installed_names(&h.store), ["a", "b"]);
    assert_eq!(status_of(&h.syncer.statuses(), "b").status(), Installed);
}

#[tokio::test]
async fn pkg05_only_packages_whose_hash_changed_are_downloaded() {
    let h = start().await;
    h.serve_and_sync(&[
        ("a", "1", "mem://a1", b"alpha"),
        ("b", "1", "mem://b1", b"bravo"),
    ])
    .await;

    h.serve_and_sync(&[
        ("a", "1", "mem://a1", b"alpha"),
        ("b", "2", "mem://b2", b"bravo two"),
    ])
    .await;

    assert_eq!(h.downloader.urls(), ["mem://a1", "mem://b1", "mem://b2"]);
    assert_eq!(h.store.content("b").as_deref(), Some(&b"bravo two"[..]));
    let statuses = h.syncer.statuses();
    assert_eq!(status_of(&statuses, "a").status(), Installed);
    assert_eq!(status_of(&statuses, "b").agent_has_version, "2");
}

#[tokio::test]
async fn pkg05_packages_no_longer_offered_are_removed() {
    let mut h = start().await;
    h.serve_and_sync(&[
        ("a", "1", "mem://a", b"alpha"),
        ("b", "1", "mem://b", b"bravo"),
    ])
    .await;
    h.log.drain();

    let second = offer(&[("a", package("1", "mem://a", b"alpha"))]);
    h.sync(second.clone()).await;

    assert_eq!(installed_names(&h.store), ["a"]);
    assert!(h.outcomes().contains(&Outcome::Removed("b".into())));
    // PKG-16: statuses list what the agent has; b is gone from every
    // snapshot of this offer.
    let snapshots = h.log.drain();
    assert!(!snapshots.is_empty());
    assert!(snapshots.iter().all(|s| !s.packages.contains_key("b")));
    assert_eq!(stored_hash(&h.store), second.all_packages_hash);
}

#[tokio::test]
async fn pkg06_same_content_with_new_package_hash_is_not_downloaded() {
    let mut h = start().await;
    h.serve_and_sync(&[("a", "1", "mem://a", b"alpha")]).await;
    h.log.drain();

    // New version, same file content.
    let relabelled = package("1-renamed", "mem://a", b"alpha");
    h.sync(offer(&[("a", relabelled.clone())])).await;

    assert_eq!(
        h.downloader.urls().len(),
        1,
        "the file is not fetched again"
    );
    let trail = status_trail(&h.log.drain(), "a");
    assert_eq!(trail, [InstallPending, Installing, Installed]);
    let status = status_of(&h.syncer.statuses(), "a").clone();
    assert_eq!(status.agent_has_version, "1-renamed");
    assert_eq!(status.agent_has_hash, relabelled.hash);
}

#[tokio::test]
async fn pkg08_content_hash_mismatch_fails_before_install_and_keeps_the_old_version() {
    let mut h = start().await;
    let first = h
        .serve_and_sync(&[("a", "1", "mem://v1", b"version one")])
        .await;
    h.log.drain();

    // The server claims one content but serves another.
    let mut lying = package("2", "mem://v2", b"version two");
    h.downloader.serve("mem://v2", b"tampered!!!");
    lying.file.as_mut().unwrap().content_hash = sha256(b"version two");
    h.sync(offer(&[("a", lying.clone())])).await;

    assert_eq!(h.store.content("a").as_deref(), Some(&b"version one"[..]));
    let status = status_of(&h.syncer.statuses(), "a").clone();
    assert_eq!(status.status(), InstallFailed);
    assert!(
        status.error_message.contains("SHA-256"),
        "{}",
        status.error_message
    );
    // PKG-18/20: the agent still has version 1; offered hash set on failure.
    assert_eq!(status.agent_has_version, "1");
    assert_eq!(status.server_offered_hash, lying.hash);
    assert!(h.outcomes().contains(&Outcome::Failed {
        name: "a".into(),
        kind: "ContentHashMismatch"
    }));
    // Never reached Installing: verification precedes install.
    let trail = status_trail(&h.log.drain(), "a");
    assert_eq!(trail, [InstallPending, Downloading, InstallFailed]);
    // A failed sync does not save the hash, so a re-offer retries.
    assert_eq!(stored_hash(&h.store), first.all_packages_hash);
}

#[tokio::test]
async fn pkg08_content_hash_that_is_not_sha256_is_refused_without_download() {
    let h = start().await;
    let mut bad = package("1", "mem://a", b"alpha");
    bad.file.as_mut().unwrap().content_hash = Bytes::from_static(b"md5-ish");
    h.downloader.serve("mem://a", b"alpha");
    h.sync(offer(&[("a", bad)])).await;

    assert!(h.downloader.urls().is_empty());
    assert!(installed_names(&h.store).is_empty());
    assert_eq!(
        h.outcomes(),
        [Outcome::Failed {
            name: "a".into(),
            kind: "InvalidContentHash"
        }]
    );
}

#[tokio::test]
async fn pkg09_signed_package_is_rejected_when_no_verifier_is_configured() {
    let h = start().await;
    h.downloader.serve("mem://a", b"alpha");
    h.downloader.serve("mem://u", b"unsigned");
    h.sync(offer(&[
        ("a", signed(package("1", "mem://a", b"alpha"), b"sig")),
        ("u", package("1", "mem://u", b"unsigned")),
    ]))
    .await;

    // Refused before downloading; the unsigned package is fine.
    assert_eq!(h.downloader.urls(), ["mem://u"]);
    assert_eq!(installed_names(&h.store), ["u"]);
    let status = status_of(&h.syncer.statuses(), "a").clone();
    assert_eq!(status.status(), InstallFailed);
    assert!(status.error_message.contains("no signature verifier"));
    assert!(h.outcomes().contains(&Outcome::Failed {
        name: "a".into(),
        kind: "NoVerifier"
    }));
}

/// Accepts a signature equal to SHA-256(key ‖ file bytes): it must see every
/// chunk, like a detached-signature verifier.
struct KeyedVerifier {
    key: &'static [u8],
}

struct KeyedCheck {
    hasher: Sha256,
    signature: Bytes,
}

impl PackageVerifier for KeyedVerifier {
    fn begin(&self, package: &PackageToVerify<'_>) -> Result<Box<dyn SignatureCheck>, VerifyError> {
        if package.signature.is_empty() {
            return Err(VerifyError::Unsigned);
        }
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        Ok(Box::new(KeyedCheck {
            hasher,
            signature: package.signature.clone(),
        }))
    }
}

impl SignatureCheck for KeyedCheck {
    fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
    }

    fn finish(self: Box<Self>, _sha256: &[u8; 32]) -> Result<(), VerifyError> {
        if self.hasher.finalize().as_slice() == self.signature {
            Ok(())
        } else {
            Err(VerifyError::Rejected("bad signature".into()))
        }
    }
}

fn keyed_signature(key: &[u8], content: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(key);
    hasher.update(content);
    hasher.finalize().to_vec()
}

#[tokio::test]
async fn pkg09_configured_verifier_accepts_good_and_rejects_bad_signatures() {
    let h = start_with(MemoryPackageStore::new(), |b| {
        b.verifier(Arc::new(KeyedVerifier { key: b"k" }))
    })
    .await;
    h.downloader.serve("mem://good", b"good bytes");
    h.downloader.serve("mem://bad", b"bad bytes");
    h.downloader.serve("mem://none", b"no signature");
    h.sync(offer(&[
        (
            "good",
            signed(
                package("1", "mem://good", b"good bytes"),
                &keyed_signature(b"k", b"good bytes"),
            ),
        ),
        (
            "bad",
            signed(
                package("1", "mem://bad", b"bad bytes"),
                &keyed_signature(b"other", b"bad bytes"),
            ),
        ),
        ("none", package("1", "mem://none", b"no signature")),
    ]))
    .await;

    assert_eq!(installed_names(&h.store), ["good"]);
    let statuses = h.syncer.statuses();
    assert_eq!(status_of(&statuses, "good").status(), Installed);
    let bad = status_of(&statuses, "bad");
    assert_eq!(bad.status(), InstallFailed);
    assert!(bad.error_message.contains("bad signature"));
    assert_eq!(status_of(&statuses, "none").status(), InstallFailed);
    // The bad one was downloaded and checked; the unsigned one was refused
    // up front.
    assert_eq!(h.downloader.urls(), ["mem://bad", "mem://good"]);
}

#[tokio::test]
async fn pkg09_ignore_signatures_is_an_explicit_opt_out() {
    let h = start_with(MemoryPackageStore::new(), |b| {
        b.verifier(Arc::new(IgnoreSignatures))
    })
    .await;
    h.downloader.serve("mem://a", b"alpha");
    h.sync(offer(&[(
        "a",
        signed(package("1", "mem://a", b"alpha"), b"whatever"),
    )]))
    .await;
    assert_eq!(installed_names(&h.store), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn pkg15_pkg21_progress_is_reported_at_a_bounded_rate() {
    let mut h = start_with(MemoryPackageStore::new(), |b| {
        b.progress_interval(Duration::from_secs(1))
    })
    .await;
    // Ten 100-byte chunks, one every 400 ms (virtual time).
    let content = vec![7u8; 1000];
    let mut steps = Vec::new();
    for chunk in content.chunks(100) {
        steps.push(Step::Sleep(Duration::from_millis(400)));
        steps.push(Step::Chunk(Bytes::copy_from_slice(chunk)));
    }
    h.downloader.reply(
        "mem://big",
        Reply::Body {
            content_length: Some(1000),
            steps,
        },
    );
    h.sync(offer(&[("big", package("1", "mem://big", &content))]))
        .await;

    let snapshots = h.log.drain();
    let progress: Vec<(f64, f64)> = snapshots
        .iter()
        .filter_map(|s| s.packages.get("big"))
        .filter(|p| p.status() == Downloading)
        .map(|p| {
            let details = p
                .download_details
                .expect("PKG-21: details while downloading");
            (details.download_percent, details.download_bytes_per_second)
        })
        .collect();
    // At start, then at most once a second: after 1.2 s, 2.4 s and 3.6 s.
    let expected = [(0.0, 0.0), (30.0, 250.0), (60.0, 250.0), (90.0, 250.0)];
    assert_eq!(progress.len(), expected.len(), "{progress:?}");
    for ((percent, rate), (want_percent, want_rate)) in progress.iter().zip(expected) {
        assert!((percent - want_percent).abs() < 1e-9, "{progress:?}");
        assert!((rate - want_rate).abs() < 1e-6, "{progress:?}");
    }
    // PKG-21: no details outside Downloading.
    for snapshot in &snapshots {
        for status in snapshot.packages.values() {
            assert_eq!(
                status.download_details.is_some(),
                status.status() == Downloading
            );
        }
    }
    assert_eq!(status_of(&h.syncer.statuses(), "big").status(), Installed);
}

#[tokio::test]
async fn pkg13_pkg16_pkg17_pkg20_statuses_order_and_shape() {
    let mut h = start().await;
    h.downloader.serve("mem://ok", b"fine");
    h.downloader.reply("mem://broken", Reply::Status(500));
    let offered = offer(&[
        ("broken", package("1", "mem://broken", b"never")),
        ("ok", package("1", "mem://ok", b"fine")),
    ]);
    h.sync(offered.clone()).await;

    let snapshots = h.log.drain();
    // The first snapshot came from the empty store at start.
    assert_eq!(snapshots[0], PackageStatuses::default());
    let offer_snapshots = &snapshots[1..];
    assert_eq!(
        status_trail(offer_snapshots, "ok"),
        [InstallPending, Downloading, Installing, Installed]
    );
    assert_eq!(
        status_trail(offer_snapshots, "broken"),
        [InstallPending, Downloading, InstallFailed]
    );
    // Processed in name order: broken finishes before ok starts.
    let broken_failed = offer_snapshots
        .iter()
        .position(|s| status_of(s, "broken").status() == InstallFailed)
        .unwrap();
    let ok_started = offer_snapshots
        .iter()
        .position(|s| status_of(s, "ok").status() == Downloading)
        .unwrap();
    assert!(broken_failed < ok_started);

    for snapshot in offer_snapshots {
        // PKG-13: every report for this offer echoes its hash.
        assert_eq!(
            snapshot.server_provided_all_packages_hash,
            offered.all_packages_hash
        );
        // PKG-16: every package being processed is listed.
        assert_eq!(snapshot.packages.len(), 2);
        for (key, status) in &snapshot.packages {
            // PKG-17: key == name.
            assert_eq!(key, &status.name);
            // PKG-20: offered hash set while pending/downloading/installing/failed.
            assert_eq!(status.server_offered_hash, offered.packages[key].hash);
            if status.status() == InstallFailed {
                assert!(
                    status.error_message.contains("HTTP 500"),
                    "{}",
                    status.error_message
                );
            } else {
                assert!(status.error_message.is_empty());
            }
            // PKG-18: nothing installed before, so "has" is empty until Installed.
            assert_eq!(
                status.agent_has_hash.is_empty(),
                status.status() != Installed
            );
        }
    }
    assert!(h.outcomes().contains(&Outcome::Failed {
        name: "broken".into(),
        kind: "DownloadStatus"
    }));
}

#[tokio::test(start_paused = true)]
async fn stalled_body_fails_with_a_typed_error_after_the_idle_timeout() {
    let h = start_with_idle_timeout(Duration::from_secs(5)).await;
    h.downloader
        .reply("mem://slow", Reply::stalling_after(b"half!", 10));
    let started = tokio::time::Instant::now();
    h.sync(offer(&[(
        "slow",
        package("1", "mem://slow", b"half!half!"),
    )]))
    .await;

    assert_eq!(
        h.outcomes(),
        [Outcome::Failed {
            name: "slow".into(),
            kind: "Stalled"
        }]
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "fails at the idle timeout, not later"
    );
    assert!(installed_names(&h.store).is_empty());
    let status = status_of(&h.syncer.statuses(), "slow").clone();
    assert_eq!(status.status(), InstallFailed);
    assert!(status.error_message.contains("stalled"));
}

#[tokio::test(start_paused = true)]
async fn stalled_response_fails_with_a_typed_error() {
    let h = start_with_idle_timeout(Duration::from_secs(7)).await;
    h.downloader.reply("mem://silent", Reply::NeverAnswer);
    h.downloader.serve("mem://next", b"next");
    h.sync(offer(&[
        ("a", package("1", "mem://silent", b"x")),
        ("b", package("1", "mem://next", b"next")),
    ]))
    .await;

    let outcomes = h.outcomes();
    assert_eq!(
        outcomes[0],
        Outcome::Failed {
            name: "a".into(),
            kind: "Stalled"
        }
    );
    // The stall does not hold up the other packages.
    assert_eq!(installed_names(&h.store), ["b"]);
}

#[tokio::test]
async fn size_limit_and_lying_lengths_are_typed_errors() {
    let h = start_with(MemoryPackageStore::new(), |b| b.max_package_size(16)).await;
    // Announced too large: refused before reading the body.
    h.downloader.reply(
        "mem://declared",
        Reply::Body {
            content_length: Some(1 << 40),
            steps: vec![Step::Stall],
        },
    );
    // No length, but the body goes past the limit.
    h.downloader.reply(
        "mem://endless",
        Reply::Body {
            content_length: None,
            steps: vec![Step::Chunk(Bytes::from(vec![1u8; 10])); 100],
        },
    );
    // Announces 4 bytes, sends 8.
    h.downloader.reply(
        "mem://long",
        Reply::Body {
            content_length: Some(4),
            steps: vec![Step::Chunk(Bytes::from_static(b"12345678"))],
        },
    );
    // Announces 8 bytes, sends 4.
    h.downloader.reply(
        "mem://short",
        Reply::Body {
            content_length: Some(8),
            steps: vec![Step::Chunk(Bytes::from_static(b"1234"))],
        },
    );
    // Body error mid-way.
    h.downloader.reply(
        "mem://reset",
        Reply::Body {
            content_length: None,
            steps: vec![Step::Chunk(Bytes::from_static(b"12")), Step::Fail],
        },
    );
    h.sync(offer(&[
        ("declared", package("1", "mem://declared", b"x")),
        ("endless", package("1", "mem://endless", b"x")),
        ("long", package("1", "mem://long", b"1234")),
        ("reset", package("1", "mem://reset", b"1234")),
        ("short", package("1", "mem://short", b"12345678")),
    ]))
    .await;

    let kinds: Vec<(String, &str)> = h
        .outcomes()
        .into_iter()
        .map(|o| match o {
            Outcome::Failed { name, kind } => (name, kind),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("declared".to_owned(), "TooLarge"),
            ("endless".to_owned(), "TooLarge"),
            ("long".to_owned(), "LengthMismatch"),
            ("reset".to_owned(), "Download"),
            ("short".to_owned(), "LengthMismatch"),
        ]
    );
    assert!(installed_names(&h.store).is_empty());
}

#[tokio::test]
async fn missing_file_and_unknown_type_fail_the_package_only() {
    let h = start().await;
    let mut no_file = package("1", "mem://x", b"x");
    no_file.file = None;
    let mut odd_type = package("1", "mem://y", b"y");
    odd_type.r#type = 42;
    h.downloader.serve("mem://z", b"z");
    h.sync(offer(&[
        ("x", no_file),
        ("y", odd_type),
        ("z", package("1", "mem://z", b"z")),
    ]))
    .await;
    assert_eq!(installed_names(&h.store), ["z"]);
    let outcomes = h.outcomes();
    assert!(outcomes.contains(&Outcome::Failed {
        name: "x".into(),
        kind: "MissingFile"
    }));
    assert!(outcomes.contains(&Outcome::Failed {
        name: "y".into(),
        kind: "UnknownPackageType"
    }));
}

#[tokio::test]
async fn a_new_offer_supersedes_a_running_download() {
    let mut h = start_with_idle_timeout(Duration::from_secs(3600)).await;
    h.downloader
        .reply("mem://x", Reply::stalling_after(b"1234", 8));
    h.downloader.serve("mem://y", b"why");
    assert!(
        h.syncer
            .offer(offer(&[("x", package("1", "mem://x", b"12345678"))]))
    );
    h.log.wait_for_status("x", Downloading).await;

    let second = offer(&[("y", package("1", "mem://y", b"why"))]);
    assert!(h.syncer.offer(second.clone()));
    h.syncer.wait_idle().await;

    assert_eq!(installed_names(&h.store), ["y"]);
    let statuses = h.syncer.statuses();
    assert_eq!(statuses.packages.keys().collect::<Vec<_>>(), ["y"]);
    assert_eq!(
        statuses.server_provided_all_packages_hash,
        second.all_packages_hash
    );
    assert_eq!(h.downloader.urls(), ["mem://x", "mem://y"]);
    // x was neither installed nor reported as failed: it was abandoned.
    assert!(
        !h.outcomes()
            .iter()
            .any(|o| matches!(o, Outcome::Failed { .. }))
    );
}

#[tokio::test]
async fn a_duplicate_offer_does_not_restart_the_running_download() {
    let mut h = start().await;
    let gate = Arc::new(Notify::new());
    h.downloader.reply(
        "mem://x",
        Reply::Body {
            content_length: Some(4),
            steps: vec![
                Step::Gate(gate.clone()),
                Step::Chunk(Bytes::from_static(b"1234")),
            ],
        },
    );
    let offered = offer(&[("x", package("1", "mem://x", b"1234"))]);
    assert!(h.syncer.offer(offered.clone()));
    h.log.wait_for_status("x", Downloading).await;

    assert!(
        !h.syncer.offer(offered.clone()),
        "same hash while running: ignored"
    );
    gate.notify_one();
    h.syncer.wait_idle().await;

    assert_eq!(h.downloader.urls(), ["mem://x"]);
    assert_eq!(status_of(&h.syncer.statuses(), "x").status(), Installed);
    // Once idle, the same offer is accepted again (and short-cut, PKG-04).
    assert!(h.syncer.offer(offered));
    h.syncer.wait_idle().await;
    assert_eq!(h.downloader.urls(), ["mem://x"]);
}

#[tokio::test]
async fn a_failed_package_is_retried_when_offered_again() {
    let h = start().await;
    h.downloader.reply("mem://a", Reply::Status(503));
    let offered = offer(&[("a", package("1", "mem://a", b"alpha"))]);
    h.sync(offered.clone()).await;
    assert_eq!(status_of(&h.syncer.statuses(), "a").status(), InstallFailed);

    h.downloader.serve("mem://a", b"alpha");
    h.sync(offered.clone()).await;
    assert_eq!(status_of(&h.syncer.statuses(), "a").status(), Installed);
    assert_eq!(stored_hash(&h.store), offered.all_packages_hash);
}

#[tokio::test]
async fn top_level_package_with_empty_name_is_installed_and_announced() {
    let h = start().await;
    let mut agent = package("9.9", "mem://agent", b"#!/bin/agent");
    agent.r#type = PackageType::TopLevel as i32;
    h.downloader.serve("mem://agent", b"#!/bin/agent");
    h.sync(offer(&[("", agent)])).await;

    assert_eq!(h.store.content("").as_deref(), Some(&b"#!/bin/agent"[..]));
    let outcomes = h.outcomes();
    let [Outcome::Installed(InstalledPackage { info, .. })] = outcomes.as_slice() else {
        panic!("{outcomes:?}");
    };
    assert_eq!(info.name, "");
    assert_eq!(info.package_type, PackageType::TopLevel);
    assert_eq!(
        status_of(&h.syncer.statuses(), "").name,
        "",
        "PKG-17 with the empty name"
    );
}

/// A memory store whose removals fail.
struct StuckStore(MemoryPackageStore);

impl PackageStore for StuckStore {
    fn installed(&self) -> BoxFuture<'_, Result<Vec<InstalledPackage>, PackageStoreError>> {
        self.0.installed()
    }
    fn all_packages_hash(&self) -> BoxFuture<'_, Result<Bytes, PackageStoreError>> {
        self.0.all_packages_hash()
    }
    fn set_all_packages_hash(&self, hash: Bytes) -> BoxFuture<'_, Result<(), PackageStoreError>> {
        self.0.set_all_packages_hash(hash)
    }
    fn begin_install<'a>(
        &'a self,
        package: &'a PackageInfo,
    ) -> BoxFuture<'a, Result<Box<dyn PackageWriter>, PackageStoreError>> {
        self.0.begin_install(package)
    }
    fn update_info<'a>(
        &'a self,
        package: &'a PackageInfo,
    ) -> BoxFuture<'a, Result<InstalledPackage, PackageStoreError>> {
        self.0.update_info(package)
    }
    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), PackageStoreError>> {
        Box::pin(async move { Err(PackageStoreError::Other(format!("{name} is busy").into())) })
    }
}

#[tokio::test]
async fn pkg22_errors_not_tied_to_an_offered_package_go_in_the_top_level_message() {
    let memory = MemoryPackageStore::new();
    let old = PackageInfo {
        name: "old".into(),
        package_type: PackageType::Addon,
        version: "0".into(),
        hash: Bytes::from_static(b"old-hash"),
        content_hash: sha256(b"old"),
    };
    memory.insert(old, Bytes::from_static(b"old"));
    let downloader = FakeDownloader::new();
    downloader.serve("mem://a", b"alpha");
    let syncer = PackageSyncer::builder(Arc::new(StuckStore(memory.clone())), downloader.clone())
        .start()
        .await
        .unwrap();
    // Restart view: the seeded package is reported as installed.
    assert_eq!(status_of(&syncer.statuses(), "old").status(), Installed);

    let offered = offer(&[("a", package("1", "mem://a", b"alpha"))]);
    syncer.offer(offered.clone());
    syncer.wait_idle().await;

    let statuses = syncer.statuses();
    assert!(
        statuses.error_message.contains("old is busy"),
        "{}",
        statuses.error_message
    );
    // PKG-16: the agent still has it, so it is still listed.
    assert_eq!(status_of(&statuses, "old").status(), Installed);
    assert_eq!(status_of(&statuses, "a").status(), Installed);
    assert!(status_of(&statuses, "a").error_message.is_empty());
    // Not fully in sync: the hash is not saved.
    assert!(stored_hash(&memory).is_empty());
}
