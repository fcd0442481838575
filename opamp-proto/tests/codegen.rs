//! The generated Rust code in `src/generated/` is checked in so that users of
//! `opamp-proto` need neither `protoc` nor a build script. This test compiles
//! the `.proto` files with `protox` (pure Rust) and `prost-build`, and fails if
//! the result differs from what is checked in.
//!
//! To regenerate after editing a `.proto` file:
//! `OPAMP_REGENERATE=1 cargo test -p opamp-proto --test codegen`.

use std::path::{Path, PathBuf};

const GENERATED: &str = "opamp.proto.v1.rs";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate(out_dir: &Path) {
    let proto_root = crate_dir().join("proto");
    let files = ["opamp/v1/anyvalue.proto", "opamp/v1/opamp.proto"];
    let descriptors = protox::compile(files, [&proto_root]).expect("the .proto files compile");
    prost_build::Config::new()
        // Large byte fields (config bodies, package contents, certificates,
        // custom message data) decode as `Bytes`, sharing the input buffer.
        .bytes(["."])
        // Ordered maps make encoding deterministic: equal messages give equal
        // bytes, which config hashes and cross-language tests rely on.
        .btree_map(["."])
        .out_dir(out_dir)
        .compile_fds(descriptors)
        .expect("prost-build generates code");
}

#[test]
fn checked_in_code_matches_the_proto_files() {
    let scratch = tempfile::tempdir().expect("temp dir");
    generate(scratch.path());
    let fresh = std::fs::read_to_string(scratch.path().join(GENERATED)).expect("generated file");
    let checked_in_path = crate_dir().join("src/generated").join(GENERATED);

    if std::env::var_os("OPAMP_REGENERATE").is_some() {
        std::fs::create_dir_all(checked_in_path.parent().unwrap()).unwrap();
        std::fs::write(&checked_in_path, &fresh).expect("write generated code");
        return;
    }

    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{} is stale; run `OPAMP_REGENERATE=1 cargo test -p opamp-proto --test codegen`",
        checked_in_path.display()
    );
}
