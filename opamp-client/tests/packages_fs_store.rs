//! `FsPackageStore`: atomic installs, safe file names, leftovers, and a
//! restarted agent that keeps what it installed (PKG-04, PKG-18).

mod packages_support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use opamp_client::{FsPackageStore, PackageInfo, PackageStore, PackageStoreError, PackageSyncer};
use opamp_proto::{PackageStatusEnum, PackageType};
use opamp_testkit::FakeDownloader;
use packages_support::*;

fn info(name: &str, version: &str, content: &[u8]) -> PackageInfo {
    PackageInfo {
        name: name.to_owned(),
        package_type: PackageType::Addon,
        version: version.to_owned(),
        hash: sha256(format!("{name}/{version}").as_bytes()),
        content_hash: sha256(content),
    }
}

async fn install(
    store: &FsPackageStore,
    info: &PackageInfo,
    content: &[u8],
) -> opamp_client::InstalledPackage {
    let mut writer = store.begin_install(info).await.unwrap();
    for chunk in content.chunks(3) {
        writer.write(chunk).await.unwrap();
    }
    writer.commit().await.unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn install_is_invisible_until_commit_and_abort_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsPackageStore::open(dir.path()).await.unwrap();
    let a = info("a", "1", b"content");

    let mut writer = store.begin_install(&a).await.unwrap();
    writer.write(b"cont").await.unwrap();
    assert!(
        store.installed().await.unwrap().is_empty(),
        "staged, not installed"
    );
    writer.abort().await.unwrap();
    assert!(entries(&dir.path().join("tmp")).is_empty());

    // Dropping a writer (a cancelled download) discards it too.
    let mut writer = store.begin_install(&a).await.unwrap();
    writer.write(b"cont").await.unwrap();
    drop(writer);
    assert!(entries(&dir.path().join("tmp")).is_empty());
    assert!(entries(&dir.path().join("files")).is_empty());
    assert!(store.installed().await.unwrap().is_empty());

    let installed = install(&store, &a, b"content").await;
    let path = installed.path.clone().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"content");
    assert_eq!(store.installed().await.unwrap(), [installed]);
    assert!(entries(&dir.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn replacing_a_package_swaps_files_and_deletes_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsPackageStore::open(dir.path()).await.unwrap();
    let v1 = install(&store, &info("a", "1", b"one"), b"one").await;
    let v2 = install(&store, &info("a", "2", b"two"), b"two").await;

    assert_ne!(
        v1.path, v2.path,
        "a fresh file, so the old one stays valid until the switch"
    );
    assert!(!v1.path.unwrap().exists());
    assert_eq!(std::fs::read(v2.path.as_ref().unwrap()).unwrap(), b"two");
    assert_eq!(entries(&dir.path().join("files")).len(), 1);
    assert_eq!(store.installed().await.unwrap(), [v2]);
}

#[tokio::test]
async fn names_from_the_network_never_become_paths() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsPackageStore::open(dir.path().join("store"))
        .await
        .unwrap();
    for name in ["../../escape", "/etc/passwd", "a/b", "", "..", "x\0y"] {
        let installed = install(&store, &info(name, "1", name.as_bytes()), name.as_bytes()).await;
        let path = installed.path.unwrap();
        assert_eq!(
            path.parent().unwrap(),
            dir.path().join("store").join("files"),
            "{name:?}"
        );
        assert_eq!(store.installed_file(name).await, Some(path));
    }
    assert_eq!(entries(dir.path()), ["store"]);
    assert_eq!(entries(&dir.path().join("store").join("files")).len(), 6);
}

#[tokio::test]
async fn state_survives_reopening_and_leftovers_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, hash) = {
        let store = FsPackageStore::open(dir.path()).await.unwrap();
        let kept = install(&store, &info("", "7", b"agent binary"), b"agent binary").await;
        install(&store, &info("gone", "1", b"x"), b"x").await;
        store.remove("gone").await.unwrap();
        store.remove("never-installed").await.unwrap();
        let hash = Bytes::from_static(b"all-hash");
        store.set_all_packages_hash(hash.clone()).await.unwrap();
        (kept, hash)
    };
    // What a crash can leave behind.
    std::fs::write(dir.path().join("tmp").join("123.part"), b"partial").unwrap();
    std::fs::write(dir.path().join("files").join("0123-orphan"), b"orphan").unwrap();
    std::fs::write(dir.path().join("state.tmp"), b"half-written").unwrap();

    let store = FsPackageStore::open(dir.path()).await.unwrap();
    assert_eq!(
        store.installed().await.unwrap(),
        std::slice::from_ref(&kept)
    );
    assert_eq!(store.all_packages_hash().await.unwrap(), hash);
    assert!(entries(&dir.path().join("tmp")).is_empty());
    assert_eq!(
        entries(&dir.path().join("files")),
        [kept.path.unwrap().file_name().unwrap().to_str().unwrap()]
    );
    assert!(!dir.path().join("state.tmp").exists());
}

#[tokio::test]
async fn corrupt_state_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state"), b"not a package store\n").unwrap();
    assert!(matches!(
        FsPackageStore::open(dir.path()).await,
        Err(PackageStoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn update_info_keeps_the_file_and_needs_the_same_content() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsPackageStore::open(dir.path()).await.unwrap();
    let v1 = install(&store, &info("a", "1", b"same"), b"same").await;
    let relabelled = store
        .update_info(&info("a", "1.0.1", b"same"))
        .await
        .unwrap();
    assert_eq!(relabelled.path, v1.path);
    assert_eq!(relabelled.info.version, "1.0.1");
    assert!(matches!(
        store.update_info(&info("a", "2", b"different")).await,
        Err(PackageStoreError::NotInstalled(_))
    ));
    assert!(matches!(
        store.update_info(&info("b", "1", b"same")).await,
        Err(PackageStoreError::NotInstalled(_))
    ));
}

#[tokio::test]
async fn pkg04_pkg18_restarted_agent_reports_its_packages_without_downloading() {
    let dir = tempfile::tempdir().unwrap();
    let downloader = FakeDownloader::new();
    downloader.serve("mem://agent", b"agent v3");
    downloader.serve("mem://plugin", b"plugin v1");
    let mut agent = package("3", "mem://agent", b"agent v3");
    agent.r#type = PackageType::TopLevel as i32;
    let offered = offer(&[
        ("", agent),
        ("plugin", package("1", "mem://plugin", b"plugin v1")),
    ]);

    {
        let store = FsPackageStore::open(dir.path()).await.unwrap();
        let (on_event, events) = event_log();
        let syncer = PackageSyncer::builder(Arc::new(store.clone()), downloader.clone())
            .on_event(on_event)
            .start()
            .await
            .unwrap();
        syncer.offer(offered.clone());
        syncer.wait_idle().await;
        assert_eq!(downloader.urls().len(), 2);
        // The supervisor learns where the new top-level package is.
        let top_level = events
            .lock()
            .unwrap()
            .iter()
            .find_map(|o| match o {
                Outcome::Installed(p) if p.info.package_type == PackageType::TopLevel => {
                    Some(p.clone())
                }
                _ => None,
            })
            .expect("top-level package installed");
        let path = top_level.path.expect("on disk");
        assert_eq!(std::fs::read(&path).unwrap(), b"agent v3");
        assert_eq!(store.installed_file("").await, Some(path));
    }

    // A new process: same directory, new store, new syncer.
    let store = FsPackageStore::open(dir.path()).await.unwrap();
    let (on_statuses, mut log) = status_log();
    let syncer = PackageSyncer::builder(Arc::new(store), downloader.clone())
        .on_statuses(on_statuses)
        .start()
        .await
        .unwrap();
    let initial = log.drain();
    assert_eq!(initial.len(), 1, "the store's view is published at start");
    let initial = &initial[0];
    assert_eq!(
        initial.server_provided_all_packages_hash,
        offered.all_packages_hash
    );
    for (name, offered_package) in &offered.packages {
        let status = status_of(initial, name);
        assert_eq!(status.status(), PackageStatusEnum::Installed);
        assert_eq!(status.agent_has_hash, offered_package.hash);
        assert_eq!(status.agent_has_version, offered_package.version);
    }

    syncer.offer(offered);
    syncer.wait_idle().await;
    assert_eq!(
        downloader.urls().len(),
        2,
        "nothing downloaded after the restart"
    );
    assert_eq!(&syncer.statuses(), initial);
}
