//! `PackageSyncer` over `MemoryPackageStore` and opamp-testkit's in-memory
//! `FakeDownloader`, fed a sequence of offers: raw protobuf
//! `PackagesAvailable` messages, or offers built from structured fuzz data so
//! that hashes can match and installs can succeed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use opamp_client::{IgnoreSignatures, MemoryPackageStore, PackageStore, PackageSyncer};
use opamp_proto::{
    DownloadableFile, Header, Message, PackageAvailable, PackageStatusEnum, PackageType,
    PackagesAvailable,
};
use opamp_testkit::{FakeDownloader, Reply, Step};
use sha2::{Digest, Sha256};

use crate::runtime::{self, within};

const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_PACKAGE: u64 = 4096;

/// How the download server treats one URL.
#[derive(Debug, Clone, Arbitrary)]
enum Behaviour {
    /// The content, in chunks of this size (0: one chunk).
    Serve { chunk: u8, announce_length: bool },
    /// Announces a length that is off by `delta` (PKG-08: must not install).
    LieAboutLength { delta: i8 },
    /// Answers with this HTTP status.
    Status(u16),
    /// Fails before answering.
    Refuse,
    /// Never answers.
    StallBeforeResponse,
    /// Sends `bytes` bytes, then nothing ever again.
    StallMidway { bytes: u8 },
    /// Sends `bytes` bytes, then breaks.
    BreakMidway { bytes: u8 },
}

#[derive(Debug, Arbitrary)]
struct FuzzPackage {
    name: u8,
    top_level: bool,
    unknown_type: bool,
    version: u8,
    hash: u8,
    content: Vec<u8>,
    /// 0: the right SHA-256; 1: a wrong one; 2: too short; 3: no file.
    content_hash: u8,
    signed: bool,
    header: Option<(String, String)>,
    behaviour: Behaviour,
}

#[derive(Debug, Arbitrary)]
struct FuzzOffer {
    all_packages_hash: u8,
    packages: Vec<FuzzPackage>,
    /// Wait for the offer to be processed before the next one.
    settle: bool,
}

impl Behaviour {
    /// What the download server answers for `content`.
    fn reply(self, content: Bytes) -> Reply {
        let length = content.len() as u64;
        let prefix =
            |bytes: u8| Step::Chunk(content.slice(..usize::from(bytes).min(content.len())));
        match self {
            Behaviour::Serve {
                chunk,
                announce_length,
            } => {
                let size = if chunk == 0 {
                    content.len().max(1)
                } else {
                    usize::from(chunk)
                };
                Reply::Body {
                    content_length: announce_length.then_some(length),
                    steps: content
                        .chunks(size)
                        .map(|piece| Step::Chunk(Bytes::copy_from_slice(piece)))
                        .collect(),
                }
            }
            Behaviour::LieAboutLength { delta } => Reply::Body {
                content_length: Some(length.saturating_add_signed(i64::from(delta))),
                steps: vec![Step::Chunk(content)],
            },
            Behaviour::Status(status) => Reply::Status(status),
            Behaviour::Refuse => Reply::Refuse,
            Behaviour::StallBeforeResponse => Reply::NeverAnswer,
            Behaviour::StallMidway { bytes } => Reply::Body {
                content_length: Some(length),
                steps: vec![prefix(bytes), Step::Stall],
            },
            Behaviour::BreakMidway { bytes } => Reply::Body {
                content_length: None,
                steps: vec![prefix(bytes), Step::Fail],
            },
        }
    }
}

/// Input: a control byte (bit 0: raw protobuf offers; bit 1: accept signed
/// packages), then either protobuf `PackagesAvailable` messages (each a
/// little-endian `u16` length and that many bytes; every URL serves its own
/// text) or structured offers read with `arbitrary`.
pub fn package_syncer(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    // Serves URLs from a table the offers fill in; unknown URLs get 404.
    let downloader = FakeDownloader::new();
    let offers = if control & 1 != 0 {
        raw_offers(rest, &downloader)
    } else {
        structured_offers(rest, &downloader)
    };
    if offers.is_empty() {
        return;
    }
    let store = MemoryPackageStore::new();
    runtime::block_on(async {
        let mut builder = PackageSyncer::builder(Arc::new(store.clone()), downloader)
            .idle_timeout(IDLE_TIMEOUT)
            .max_package_size(MAX_PACKAGE)
            .progress_interval(Duration::from_millis(1));
        if control & 2 != 0 {
            builder = builder.verifier(Arc::new(IgnoreSignatures));
        }
        let syncer = builder.start().await.expect("a memory store never fails");
        // Offers the syncer took: one with the same all_packages_hash as the
        // offer in progress is ignored as a duplicate, by design.
        let mut accepted: Vec<&PackagesAvailable> = Vec::new();
        for (offer, settle) in &offers {
            if syncer.offer(offer.clone()) {
                accepted.push(offer);
            }
            if *settle {
                within(
                    Duration::from_secs(3600),
                    "package sync",
                    syncer.wait_idle(),
                )
                .await;
            }
        }
        within(
            Duration::from_secs(3600),
            "package sync",
            syncer.wait_idle(),
        )
        .await;
        let Some((last, earlier)) = accepted.split_last() else {
            return;
        };
        // PKG-04: an all_packages_hash seen before may be taken as "done".
        let repeated = !last.all_packages_hash.is_empty()
            && earlier
                .iter()
                .any(|offer| offer.all_packages_hash == last.all_packages_hash);
        check(&store, &syncer, last, !repeated).await;
    });
}

async fn check(
    store: &MemoryPackageStore,
    syncer: &PackageSyncer,
    offer: &PackagesAvailable,
    removal_expected: bool,
) {
    let installed = store.installed().await.expect("memory store");
    for package in &installed {
        // PKG-08: nothing reaches the store unless its SHA-256 matches.
        let content = store.content(&package.info.name).expect("content kept");
        assert_eq!(
            Sha256::digest(&content).as_slice(),
            &package.info.content_hash[..],
            "installed content does not match its content_hash"
        );
        // PKG-05: what the last offer does not name is gone.
        assert!(
            !removal_expected || offer.packages.contains_key(&package.info.name),
            "{:?} not offered any more but still installed",
            package.info.name
        );
    }
    let statuses = syncer.statuses();
    assert_eq!(
        statuses.server_provided_all_packages_hash,
        offer.all_packages_hash
    );
    for (name, offered) in &offer.packages {
        let status = statuses
            .packages
            .get(name)
            .unwrap_or_else(|| panic!("no status for offered package {name:?}"));
        match PackageStatusEnum::try_from(status.status) {
            Ok(PackageStatusEnum::Installed) => {
                let held = installed
                    .iter()
                    .find(|package| &package.info.name == name)
                    .unwrap_or_else(|| panic!("{name:?} reported installed but not in the store"));
                assert_eq!(held.info.hash, offered.hash);
            }
            Ok(PackageStatusEnum::InstallFailed) => {
                assert!(!status.error_message.is_empty(), "failure without a reason");
            }
            other => panic!("{name:?} left in state {other:?} after the sync finished"),
        }
    }
}

fn raw_offers(mut rest: &[u8], downloader: &FakeDownloader) -> Vec<(PackagesAvailable, bool)> {
    let mut offers = Vec::new();
    while let [low, high, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*low, *high])).min(tail.len());
        if let Ok(offer) = PackagesAvailable::decode(&tail[..len]) {
            for package in offer.packages.values() {
                if let Some(file) = &package.file {
                    let body = Bytes::from(file.download_url.clone().into_bytes());
                    let behaviour = Behaviour::Serve {
                        chunk: 3,
                        announce_length: true,
                    };
                    downloader.reply(&file.download_url, behaviour.reply(body));
                }
            }
            offers.push((offer, len % 2 == 0));
        }
        rest = &tail[len..];
    }
    offers
}

fn structured_offers(rest: &[u8], downloader: &FakeDownloader) -> Vec<(PackagesAvailable, bool)> {
    let mut unstructured = Unstructured::new(rest);
    let mut fuzz_offers = Vec::new();
    while fuzz_offers.len() < 6 && !unstructured.is_empty() {
        match FuzzOffer::arbitrary(&mut unstructured) {
            Ok(offer) => fuzz_offers.push(offer),
            Err(_) => break,
        }
    }
    let mut offers = Vec::new();
    for (index, fuzz_offer) in fuzz_offers.into_iter().enumerate() {
        let mut packages = BTreeMap::new();
        for (position, package) in fuzz_offer.packages.into_iter().take(6).enumerate() {
            // A few names, so offers overlap; "" is the lone top-level name.
            let name = match package.name % 5 {
                0 => String::new(),
                n => format!("package-{n}"),
            };
            let url = format!("mem://offer-{index}/{position}/{name}");
            let content = Bytes::from(package.content);
            let content_hash = match package.content_hash % 4 {
                0 => Bytes::copy_from_slice(&Sha256::digest(&content)),
                1 => Bytes::from(vec![package.hash; 32]),
                _ => Bytes::from_static(b"short"),
            };
            let file = (package.content_hash % 4 != 3).then(|| DownloadableFile {
                download_url: url.clone(),
                content_hash,
                signature: if package.signed {
                    Bytes::from_static(b"signature")
                } else {
                    Bytes::new()
                },
                headers: package.header.map(|(key, value)| opamp_proto::Headers {
                    headers: vec![Header { key, value }],
                }),
            });
            downloader.reply(&url, package.behaviour.reply(content));
            let r#type = if package.unknown_type {
                7
            } else if package.top_level {
                PackageType::TopLevel as i32
            } else {
                PackageType::Addon as i32
            };
            packages.insert(
                name,
                PackageAvailable {
                    r#type,
                    version: format!("1.{}", package.version),
                    file,
                    hash: Bytes::from(vec![package.hash; 4]),
                },
            );
        }
        // Even bytes make a hash of this offer alone; odd ones may repeat an
        // earlier offer's (PKG-04 shortcut).
        let all_packages_hash = match fuzz_offer.all_packages_hash {
            0 => Bytes::new(),
            byte if byte % 2 == 0 => Bytes::from(vec![byte, index as u8]),
            byte => Bytes::from(vec![byte]),
        };
        offers.push((
            PackagesAvailable {
                packages,
                all_packages_hash,
            },
            fuzz_offer.settle,
        ));
    }
    offers
}
