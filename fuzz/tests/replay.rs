//! Replays every committed corpus and regression input through its target,
//! on the stable toolchain: the smoke run of the fuzz targets in CI.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, run) = opamp_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("known target");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = inputs(&root.join("corpus").join(target));
    assert!(!corpus.is_empty(), "no seed corpus for {target}");
    let regressions = inputs(&root.join("regressions").join(target));
    let mut failed = Vec::new();
    for file in corpus.iter().chain(&regressions) {
        let data = std::fs::read(file).expect("readable input");
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target} failed on: {failed:#?}");
}

#[test]
fn ws_frame() {
    replay("ws_frame");
}

#[test]
fn http_body() {
    replay("http_body");
}

#[test]
fn server_connection() {
    replay("server_connection");
}

#[test]
fn server_core() {
    replay("server_core");
}

#[test]
fn client_core() {
    replay("client_core");
}

#[test]
fn package_syncer() {
    replay("package_syncer");
}

#[test]
fn every_target_is_replayed() {
    let names: Vec<&str> = opamp_fuzz::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "ws_frame",
            "http_body",
            "server_connection",
            "server_core",
            "client_core",
            "package_syncer"
        ]
    );
}
