//! A package store in a directory, with atomic installs.
//!
//! `state` format, every variable field hex-encoded behind an `x` so that no
//! field is empty or contains a space:
//! ```text
//! opamp-rs package store v1
//! all x<all_packages_hash>
//! pkg x<name> <type number> x<version> x<hash> x<content_hash> <file name>
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use opamp_proto::PackageType;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::store::{InstalledPackage, PackageInfo, PackageStore, PackageStoreError, PackageWriter};

const STATE_HEADER: &str = "opamp-rs package store v1";
const STATE_FILE: &str = "state";
const STATE_TEMP_FILE: &str = "state.tmp";
const FILES_DIR: &str = "files";
const TMP_DIR: &str = "tmp";

#[derive(Clone, Debug)]
struct Entry {
    info: PackageInfo,
    file_name: String,
}

#[derive(Clone, Debug, Default)]
struct State {
    all_packages_hash: Bytes,
    packages: BTreeMap<String, Entry>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    files_dir: PathBuf,
    tmp_dir: PathBuf,
    state: Mutex<State>,
    unique: AtomicU64,
}

/// A [`PackageStore`] in a directory on disk. Installs are atomic and survive
/// restarts, so a restarted agent reports what it has without downloading
/// again.
///
/// Layout under the root:
/// - `state`: the metadata (names, versions, hashes), a small text file;
/// - `files/`: one file per installed package;
/// - `tmp/`: files being downloaded.
///
/// Package names come from the network, so they never become file names: a
/// package's file is named after the SHA-256 of its name plus a unique
/// suffix. An install writes to `tmp/`, renames into `files/` under a fresh
/// name, then replaces `state` (write a temporary file, fsync, rename); only
/// then is the previous file deleted. A crash at any point leaves `state`
/// describing complete files, and leftovers are deleted the next time the
/// store is opened. The file keeps the default permissions: a supervisor that
/// runs a top-level package sets the mode it needs.
///
/// One process at a time may use a directory.
#[derive(Clone, Debug)]
pub struct FsPackageStore {
    inner: Arc<Inner>,
}

impl FsPackageStore {
    /// Opens (creating if needed) a store in `root`, deleting leftovers of
    /// interrupted installs.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, PackageStoreError> {
        let root = root.into();
        let files_dir = root.join(FILES_DIR);
        let tmp_dir = root.join(TMP_DIR);
        let state = {
            let root = root.clone();
            let files_dir = files_dir.clone();
            let tmp_dir = tmp_dir.clone();
            run_blocking(move || open_blocking(&root, &files_dir, &tmp_dir)).await?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                files_dir,
                tmp_dir,
                state: Mutex::new(state),
                unique: AtomicU64::new(0),
            }),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The file of an installed package, e.g. the top-level package a
    /// supervisor runs.
    pub async fn installed_file(&self, name: &str) -> Option<PathBuf> {
        let state = self.inner.state.lock().await;
        state
            .packages
            .get(name)
            .map(|entry| self.inner.files_dir.join(&entry.file_name))
    }
}

impl Inner {
    /// A name no other file of this store uses: time, process id and a
    /// counter, checked against the directory.
    fn unique_name(&self, dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let count = self.unique.fetch_add(1, Ordering::Relaxed);
            let candidate = dir.join(format!(
                "{prefix}{nanos:x}-{:x}-{count:x}{suffix}",
                std::process::id()
            ));
            if !candidate.exists() {
                return candidate;
            }
        }
    }

    fn installed(&self, entry: &Entry) -> InstalledPackage {
        InstalledPackage {
            info: entry.info.clone(),
            path: Some(self.files_dir.join(&entry.file_name)),
        }
    }

    /// Persists `state`; the caller holds the state lock.
    async fn save(&self, state: &State) -> Result<(), PackageStoreError> {
        let text = render_state(state);
        let root = self.root.clone();
        run_blocking(move || save_blocking(&root, &text)).await
    }
}

async fn run_blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, PackageStoreError> + Send + 'static,
) -> Result<T, PackageStoreError> {
    tokio::task::spawn_blocking(job).await.map_err(|e| {
        PackageStoreError::io("running a blocking file task", std::io::Error::other(e))
    })?
}

fn open_blocking(
    root: &Path,
    files_dir: &Path,
    tmp_dir: &Path,
) -> Result<State, PackageStoreError> {
    for dir in [root, files_dir, tmp_dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| PackageStoreError::io(format!("creating {}", dir.display()), e))?;
    }
    let state = match std::fs::read_to_string(root.join(STATE_FILE)) {
        Ok(text) => parse_state(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(e) => return Err(PackageStoreError::io("reading the state file", e)),
    };
    // Interrupted downloads and half-written state.
    remove_all_but(tmp_dir, |_| false)?;
    let _ = std::fs::remove_file(root.join(STATE_TEMP_FILE));
    // Files a crash left unreferenced (renamed in but not recorded, or
    // replaced but not yet deleted).
    remove_all_but(files_dir, |name| {
        state.packages.values().any(|entry| entry.file_name == name)
    })?;
    Ok(state)
}

fn remove_all_but(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<(), PackageStoreError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| PackageStoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| PackageStoreError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(&keep) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "could not delete a leftover package file");
        }
    }
    Ok(())
}

fn save_blocking(root: &Path, text: &str) -> Result<(), PackageStoreError> {
    use std::io::Write as _;
    let temp = root.join(STATE_TEMP_FILE);
    let mut file = std::fs::File::create(&temp)
        .map_err(|e| PackageStoreError::io("creating the state file", e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| PackageStoreError::io("writing the state file", e))?;
    drop(file);
    std::fs::rename(&temp, root.join(STATE_FILE))
        .map_err(|e| PackageStoreError::io("replacing the state file", e))?;
    sync_dir(root);
    Ok(())
}

/// Makes a rename durable. Best effort: not every platform can open a
/// directory for syncing.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

fn hex_field(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(1 + bytes.len() * 2);
    out.push('x');
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn parse_hex_field(field: &str) -> Result<Vec<u8>, PackageStoreError> {
    let digits = field
        .strip_prefix('x')
        .ok_or_else(|| PackageStoreError::Corrupt(format!("field {field:?} lacks its x prefix")))?;
    hex::decode(digits).map_err(|e| PackageStoreError::Corrupt(format!("field {field:?}: {e}")))
}

fn parse_text_field(field: &str) -> Result<String, PackageStoreError> {
    String::from_utf8(parse_hex_field(field)?)
        .map_err(|_| PackageStoreError::Corrupt(format!("field {field:?} is not UTF-8")))
}

fn render_state(state: &State) -> String {
    let mut text = format!(
        "{STATE_HEADER}\nall {}\n",
        hex_field(&state.all_packages_hash)
    );
    for entry in state.packages.values() {
        let info = &entry.info;
        let _ = writeln!(
            text,
            "pkg {} {} {} {} {} {}",
            hex_field(info.name.as_bytes()),
            info.package_type as i32,
            hex_field(info.version.as_bytes()),
            hex_field(&info.hash),
            hex_field(&info.content_hash),
            entry.file_name
        );
    }
    text
}

fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn parse_state(text: &str) -> Result<State, PackageStoreError> {
    let mut lines = text.lines();
    if lines.next() != Some(STATE_HEADER) {
        return Err(PackageStoreError::Corrupt(
            "unknown state file header".into(),
        ));
    }
    let mut state = State::default();
    for line in lines {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["all", hash] => state.all_packages_hash = parse_hex_field(hash)?.into(),
            ["pkg", name, kind, version, hash, content_hash, file_name] => {
                let kind: i32 = kind
                    .parse()
                    .map_err(|_| PackageStoreError::Corrupt(format!("package type {kind:?}")))?;
                let package_type = PackageType::try_from(kind)
                    .map_err(|_| PackageStoreError::Corrupt(format!("package type {kind}")))?;
                if !valid_file_name(file_name) {
                    return Err(PackageStoreError::Corrupt(format!(
                        "file name {file_name:?}"
                    )));
                }
                let info = PackageInfo {
                    name: parse_text_field(name)?,
                    package_type,
                    version: parse_text_field(version)?,
                    hash: parse_hex_field(hash)?.into(),
                    content_hash: parse_hex_field(content_hash)?.into(),
                };
                state.packages.insert(
                    info.name.clone(),
                    Entry {
                        info,
                        file_name: (*file_name).to_owned(),
                    },
                );
            }
            [""] => {}
            _ => {
                return Err(PackageStoreError::Corrupt(format!(
                    "unexpected line {line:?}"
                )));
            }
        }
    }
    Ok(state)
}

/// The stable part of a package's file name: never the name itself, which
/// comes from the network.
fn file_stem(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut stem = String::with_capacity(33);
    for byte in &digest[..16] {
        let _ = write!(stem, "{byte:02x}");
    }
    stem.push('-');
    stem
}

impl PackageStore for FsPackageStore {
    fn installed(&self) -> BoxFuture<'_, Result<Vec<InstalledPackage>, PackageStoreError>> {
        Box::pin(async move {
            let state = self.inner.state.lock().await;
            Ok(state
                .packages
                .values()
                .map(|entry| self.inner.installed(entry))
                .collect())
        })
    }

    fn all_packages_hash(&self) -> BoxFuture<'_, Result<Bytes, PackageStoreError>> {
        Box::pin(async move { Ok(self.inner.state.lock().await.all_packages_hash.clone()) })
    }

    fn set_all_packages_hash(&self, hash: Bytes) -> BoxFuture<'_, Result<(), PackageStoreError>> {
        Box::pin(async move {
            let mut state = self.inner.state.lock().await;
            let mut next = state.clone();
            next.all_packages_hash = hash;
            self.inner.save(&next).await?;
            *state = next;
            Ok(())
        })
    }

    fn begin_install<'a>(
        &'a self,
        package: &'a PackageInfo,
    ) -> BoxFuture<'a, Result<Box<dyn PackageWriter>, PackageStoreError>> {
        Box::pin(async move {
            let temp_path = self.inner.unique_name(&self.inner.tmp_dir, "", ".part");
            let file = tokio::fs::File::create(&temp_path)
                .await
                .map_err(|e| PackageStoreError::io("creating a download file", e))?;
            Ok(Box::new(FsWriter {
                inner: Arc::clone(&self.inner),
                info: package.clone(),
                file: Some(file),
                temp_path: Some(temp_path),
            }) as Box<dyn PackageWriter>)
        })
    }

    fn update_info<'a>(
        &'a self,
        package: &'a PackageInfo,
    ) -> BoxFuture<'a, Result<InstalledPackage, PackageStoreError>> {
        Box::pin(async move {
            let mut state = self.inner.state.lock().await;
            let mut next = state.clone();
            let entry = next
                .packages
                .get_mut(&package.name)
                .filter(|entry| entry.info.content_hash == package.content_hash)
                .ok_or_else(|| PackageStoreError::NotInstalled(package.name.clone()))?;
            entry.info = package.clone();
            let installed = self.inner.installed(entry);
            self.inner.save(&next).await?;
            *state = next;
            Ok(installed)
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), PackageStoreError>> {
        Box::pin(async move {
            let mut state = self.inner.state.lock().await;
            let mut next = state.clone();
            let Some(entry) = next.packages.remove(name) else {
                return Ok(());
            };
            self.inner.save(&next).await?;
            *state = next;
            let path = self.inner.files_dir.join(&entry.file_name);
            if let Err(e) = tokio::fs::remove_file(&path).await {
                // The state no longer references it; the next open deletes it.
                tracing::warn!(path = %path.display(), error = %e, "could not delete a removed package file");
            }
            Ok(())
        })
    }
}

/// Stages one download in `tmp/`.
struct FsWriter {
    inner: Arc<Inner>,
    info: PackageInfo,
    file: Option<tokio::fs::File>,
    /// `None` once the file was committed or deleted.
    temp_path: Option<PathBuf>,
}

impl FsWriter {
    fn file(&mut self) -> Result<&mut tokio::fs::File, PackageStoreError> {
        self.file.as_mut().ok_or_else(|| {
            PackageStoreError::io(
                "writing a download file",
                std::io::Error::other("writer already finished"),
            )
        })
    }

    async fn commit_inner(&mut self) -> Result<InstalledPackage, PackageStoreError> {
        let mut file = self.file.take().ok_or_else(|| {
            PackageStoreError::io(
                "committing a download file",
                std::io::Error::other("writer already finished"),
            )
        })?;
        file.flush()
            .await
            .map_err(|e| PackageStoreError::io("writing a download file", e))?;
        file.sync_all()
            .await
            .map_err(|e| PackageStoreError::io("syncing a download file", e))?;
        drop(file);
        let temp_path = self.temp_path.clone().ok_or_else(|| {
            PackageStoreError::io(
                "committing a download file",
                std::io::Error::other("writer already finished"),
            )
        })?;

        let inner = Arc::clone(&self.inner);
        let mut state = inner.state.lock().await;
        let final_path = inner.unique_name(&inner.files_dir, &file_stem(&self.info.name), "");
        tokio::fs::rename(&temp_path, &final_path)
            .await
            .map_err(|e| PackageStoreError::io("moving a download into place", e))?;
        self.temp_path = None;
        sync_dir(&inner.files_dir);

        let file_name = final_path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .unwrap_or_default();
        let mut next = state.clone();
        let previous = next.packages.insert(
            self.info.name.clone(),
            Entry {
                info: self.info.clone(),
                file_name,
            },
        );
        if let Err(e) = inner.save(&next).await {
            // Keep the old package; the new file is not referenced.
            let _ = tokio::fs::remove_file(&final_path).await;
            return Err(e);
        }
        *state = next;
        drop(state);
        if let Some(previous) = previous {
            let old = inner.files_dir.join(previous.file_name);
            if let Err(e) = tokio::fs::remove_file(&old).await {
                tracing::warn!(path = %old.display(), error = %e, "could not delete a replaced package file");
            }
        }
        Ok(InstalledPackage {
            info: self.info.clone(),
            path: Some(final_path),
        })
    }

    fn discard(&mut self) {
        self.file = None;
        if let Some(path) = self.temp_path.take() {
            // Synchronous so that it also runs from Drop; deleting one file is quick.
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a discarded download");
            }
        }
    }
}

impl PackageWriter for FsWriter {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), PackageStoreError>> {
        Box::pin(async move {
            self.file()?
                .write_all(chunk)
                .await
                .map_err(|e| PackageStoreError::io("writing a download file", e))
        })
    }

    fn commit(
        mut self: Box<Self>,
    ) -> BoxFuture<'static, Result<InstalledPackage, PackageStoreError>> {
        Box::pin(async move {
            let result = self.commit_inner().await;
            if result.is_err() {
                self.discard();
            }
            result
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, Result<(), PackageStoreError>> {
        Box::pin(async move {
            if let Some(mut file) = self.file.take() {
                // Let pending writes finish so the delete below is the last word.
                let _ = file.flush().await;
            }
            self.discard();
            Ok(())
        })
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        self.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_awkward_values() {
        let mut state = State {
            all_packages_hash: Bytes::from_static(&[1, 2, 3]),
            ..State::default()
        };
        for (name, version) in [("", ""), ("a b\nc", "1 2"), ("../x", "é")] {
            state.packages.insert(
                name.to_owned(),
                Entry {
                    info: PackageInfo {
                        name: name.to_owned(),
                        package_type: PackageType::Addon,
                        version: version.to_owned(),
                        hash: Bytes::new(),
                        content_hash: Bytes::from_static(&[0xff; 32]),
                    },
                    file_name: "abc-1".to_owned(),
                },
            );
        }
        let parsed = parse_state(&render_state(&state)).expect("parses");
        assert_eq!(parsed.all_packages_hash, state.all_packages_hash);
        assert_eq!(parsed.packages.len(), 3);
        for (name, entry) in &state.packages {
            assert_eq!(parsed.packages[name].info, entry.info);
        }
    }

    #[test]
    fn corrupt_state_is_a_typed_error() {
        for text in [
            "something else\n",
            "opamp-rs package store v1\nall 00\n",
            "opamp-rs package store v1\npkg x 1 x x x ../../etc\n",
            "opamp-rs package store v1\npkg x x0 x x x ab\n",
            "opamp-rs package store v1\npkg x 7 x x x ab\n",
            "opamp-rs package store v1\nbogus\n",
        ] {
            assert!(
                matches!(parse_state(text), Err(PackageStoreError::Corrupt(_))),
                "{text:?}"
            );
        }
    }
}
