//! The server core (`src/protocol/`) is pure: no runtime, no clock reads,
//! no I/O, and it only leans on modules that are pure themselves. A grep
//! over the sources, so that a stray `tokio::` or `Instant::now()` fails CI
//! the day it is written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Modules of the crate the core may use, all pure.
const PURE_MODULES: &[&str] = &["events", "messages", "record", "vocab", "error", "protocol"];

/// What a pure module must not mention outside its tests.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "Instant::now",
    "SystemTime::now",
    "std::net::TcpStream",
    "std::fs",
    "std::thread",
    "Mutex",
    "RwLock",
    "async fn",
    ".await",
    "hyper",
    "tungstenite",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The file's text before its unit tests.
fn without_tests(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{path:?}: {error}"));
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Whether `code` mentions `word` as a whole token (`.await` is not
/// `awaiting`).
fn mentions(code: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(word).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].chars().next();
        let starts_ident = word.starts_with(ident);
        (!starts_ident || !before.is_some_and(ident)) && !after.is_some_and(ident)
    })
}

fn files_of(module: &str) -> Vec<PathBuf> {
    let dir = src().join(module);
    if dir.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
            .filter(|path| path.file_name().is_some_and(|name| name != "tests.rs"))
            .collect();
        files.sort();
        files
    } else {
        vec![src().join(format!("{module}.rs"))]
    }
}

#[test]
fn the_server_core_and_what_it_uses_do_no_io_and_read_no_clock() {
    let mut problems = Vec::new();
    for module in PURE_MODULES {
        for file in files_of(module) {
            let text = without_tests(&file);
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                let in_core = file.starts_with(src().join("protocol"));
                let forbidden = FORBIDDEN
                    .iter()
                    .chain(in_core.then_some(&"opamp_transport"));
                for word in forbidden {
                    if mentions(code, word) {
                        problems.push(format!(
                            "{}:{}: `{word}`: {line}",
                            file.display(),
                            number + 1
                        ));
                    }
                }
                if let Some(rest) = code.trim_start().strip_prefix("use crate::") {
                    let used = rest
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap_or_default();
                    if !PURE_MODULES.contains(&used) {
                        problems.push(format!(
                            "{}:{}: uses `crate::{used}`, which is not a pure module",
                            file.display(),
                            number + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the core is not pure:\n{}",
        problems.join("\n")
    );
}

/// The check above must see the core at all.
#[test]
fn the_check_reads_the_core() {
    let files: BTreeSet<String> = files_of("protocol")
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.contains("mod.rs") && files.contains("status.rs"),
        "{files:?}"
    );
    assert!(without_tests(&src().join("protocol/mod.rs")).contains("pub struct ServerCore"));
}

#[test]
fn tokens_are_matched_whole() {
    assert!(mentions("let x = f().await;", ".await"));
    assert!(!mentions("record.awaiting_full_state", ".await"));
    assert!(mentions("use tokio::sync::Mutex;", "tokio"));
    assert!(!mentions("let tokio_like = 1;", "tokio"));
}
