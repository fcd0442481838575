//! Fuzz targets for opamp-rs, as plain functions.
//!
//! Each function takes the fuzzer's bytes, drives one part of the stack
//! with them and panics only when an invariant breaks (a panic inside the
//! code under test is a finding too). The libFuzzer binaries in
//! `fuzz_targets/` are one-line wrappers, and `tests/replay.rs` runs every
//! committed corpus and regression file through the same functions on the
//! stable toolchain.
//!
//! | target | what it drives |
//! |---|---|
//! | [`ws_frame`] | `decode_frame` for both message types, both headerless modes |
//! | [`http_body`] | `read_agent_message` (plain, gzip, chunked) and `decode_gzip_body` |
//! | [`server_connection`] | an `OpampServer` fed a sequence of WebSocket frames or HTTP bodies |
//! | [`client_core`] | `ClientCore` fed a sequence of `ServerToAgent` messages and driver events |
//! | [`package_syncer`] | `PackageSyncer` over `MemoryPackageStore` and an in-memory downloader |
#![forbid(unsafe_code)]

mod client_core;
mod http_body;
mod package_syncer;
mod runtime;
mod server_connection;
mod server_core;
mod ws_frame;

pub use client_core::client_core;
pub use http_body::http_body;
pub use package_syncer::package_syncer;
pub use server_connection::server_connection;
pub use server_core::server_core;
pub use ws_frame::ws_frame;

/// A fuzz target: takes the fuzzer's bytes, panics on a finding.
pub type Target = fn(&[u8]);

/// Every target by name, as `cargo fuzz` knows them (the corpus directories
/// under `fuzz/corpus/` carry the same names).
pub const TARGETS: &[(&str, Target)] = &[
    ("ws_frame", ws_frame),
    ("http_body", http_body),
    ("server_connection", server_connection),
    ("server_core", server_core),
    ("client_core", client_core),
    ("package_syncer", package_syncer),
];
