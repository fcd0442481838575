//! The encoding benchmark compares us with opamp-go only if both sides encode
//! the same messages. This test builds each benchmark message in Go (with
//! opamp-go's generated types, `interop/cmd/gomessages`) and here, and
//! compares the SHA-256 of the two encodings.
//!
//! Needs Go. In CI (`CI=true`) a missing Go toolchain fails the test; a local
//! developer without Go gets a notice and a skip.

use std::path::PathBuf;
use std::process::Command;

use opamp_benches::messages;
use opamp_proto::Message;
use sha2::{Digest, Sha256};

fn go_hashes() -> Option<serde_json::Value> {
    let interop = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop");
    // No Go: a notice and a skip locally, a failure in CI.
    let go = opamp_testkit::go()?;
    let output = Command::new(go)
        .args(["run", "-mod=readonly", "./cmd/gomessages"])
        .current_dir(&interop)
        .output()
        .expect("running go");
    assert!(
        output.status.success(),
        "go run ./cmd/gomessages failed (is the Go module proxy reachable?):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("gomessages prints JSON"))
}

fn sha256_hex(message: &impl Message) -> String {
    hex::encode(Sha256::digest(message.encode_to_vec()))
}

#[test]
fn benchmark_messages_encode_to_the_same_bytes_in_rust_and_go() {
    let Some(go) = go_hashes() else { return };
    let ours = [
        ("heartbeat", sha256_hex(&messages::heartbeat())),
        ("full_status", sha256_hex(&messages::full_status())),
        (
            "remote_config_1mib",
            sha256_hex(&messages::big_remote_config()),
        ),
        (
            "packages_available",
            sha256_hex(&messages::packages_available()),
        ),
    ];
    for (name, hash) in ours {
        assert_eq!(
            go[name].as_str(),
            Some(hash.as_str()),
            "{name} differs between Rust and Go"
        );
    }
}
