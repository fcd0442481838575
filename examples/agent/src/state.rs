//! What an agent keeps in its state directory, and the remote config files
//! it applies there.
//!
//! Layout:
//! - `instance_uid`: the canonical UUID (UID-02);
//! - `remote_config_status.pb`: the last reported status, so an applied
//!   config is not applied again after a restart;
//! - `config/`: the applied remote config, one file per config map entry;
//! - `config_meta.pb`: that config without its bodies, so the content type
//!   and role of each entry (spec v0.20.0) survive into the effective config
//!   the agent reports;
//! - `packages/`: the package store;
//! - `tls/`: a client certificate issued by the server, and a CSR key;
//! - `config-candidate/`: a new config staged for the supervisor's
//!   validation command (supervisor mode);
//! - `supervised/`: the supervisor's executables (supervisor mode).

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use opamp_client::InstanceUid;
use opamp_client::proto::{
    AgentConfigMap, AgentConfigObject, EffectiveConfig, Message, RemoteConfigStatus,
};

/// The text that makes a config file fail validation (see [`validate`]).
pub(crate) const INVALID_MARKER: &str = "invalid:";

/// The file name used for the config map entry named `""` (the usual name
/// of a lone config file). Valid entry names never start with `_`, so the
/// mapping goes both ways.
const UNNAMED_FILE: &str = "_default";

/// The applied config's entries without bodies (see the module docs).
const CONFIG_META_FILE: &str = "config_meta.pb";

/// Longest config file name accepted.
const MAX_NAME_LEN: usize = 128;

/// One agent's state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Creates the directory (and `config/`) if needed.
    pub(crate) fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let state = Self { root: root.into() };
        std::fs::create_dir_all(state.config_dir())?;
        Ok(state)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }

    pub(crate) fn packages_dir(&self) -> PathBuf {
        self.root.join("packages")
    }

    pub(crate) fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub(crate) fn supervised_dir(&self) -> PathBuf {
        self.root.join("supervised")
    }

    /// Where a supervisor stages a new config for its validation command,
    /// away from the files the running child reads.
    pub(crate) fn candidate_dir(&self) -> PathBuf {
        self.root.join("config-candidate")
    }

    /// The persisted instance uid, or a fresh UUIDv7 that is persisted now.
    pub(crate) fn instance_uid(&self) -> io::Result<InstanceUid> {
        let path = self.root.join("instance_uid");
        match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<InstanceUid>() {
                Ok(uid) if !uid.is_nil() => return Ok(uid),
                _ => {
                    tracing::warn!(path = %path.display(), "unreadable instance uid; making a new one")
                }
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let uid = InstanceUid::new_v7();
        self.save_instance_uid(uid)?;
        Ok(uid)
    }

    pub(crate) fn save_instance_uid(&self, uid: InstanceUid) -> io::Result<()> {
        write_atomically(
            &self.root.join("instance_uid"),
            format!("{uid}\n").as_bytes(),
        )
    }

    pub(crate) fn remote_config_status(&self) -> Option<RemoteConfigStatus> {
        let bytes = std::fs::read(self.root.join("remote_config_status.pb")).ok()?;
        RemoteConfigStatus::decode(Bytes::from(bytes)).ok()
    }

    pub(crate) fn save_remote_config_status(&self, status: &RemoteConfigStatus) -> io::Result<()> {
        write_atomically(
            &self.root.join("remote_config_status.pb"),
            &status.encode_to_vec(),
        )
    }

    /// Replaces the files in `config/` with the entries of `config`
    /// (call [`validate`] first). Files not in the map are removed. Each
    /// entry's content type and role are kept beside the files.
    pub(crate) fn write_config(&self, config: &AgentConfigMap) -> io::Result<()> {
        let mut meta = config.clone();
        for object in meta.config_map.values_mut() {
            object.body = Bytes::new();
        }
        std::fs::create_dir_all(&self.root)?;
        write_atomically(&self.root.join(CONFIG_META_FILE), &meta.encode_to_vec())?;
        write_config_in(&self.config_dir(), config)
    }

    /// The config as it is on disk: every file of `config/`, named as the
    /// server named it, with the content type and role the server gave it
    /// (for files the server did not send, a content type guessed from the
    /// extension and no role).
    pub(crate) fn read_config(&self) -> io::Result<AgentConfigMap> {
        let mut config = read_config_in(&self.config_dir())?;
        let meta = self.config_meta();
        for (name, object) in &mut config.config_map {
            if let Some(sent) = meta.config_map.get(name) {
                object.content_type = sent.content_type.clone();
                object.role = sent.role.clone();
            }
        }
        Ok(config)
    }

    /// Whether `config/` holds a config worth running: at least one file
    /// with content (an empty `_default` is only a placeholder).
    pub(crate) fn has_config(&self) -> io::Result<bool> {
        Ok(!is_empty_config(&self.read_config()?))
    }

    /// The applied config's entries without bodies; empty if there is none
    /// or it cannot be read.
    fn config_meta(&self) -> AgentConfigMap {
        let path = self.root.join(CONFIG_META_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => AgentConfigMap::decode(Bytes::from(bytes)).unwrap_or_else(|error| {
                tracing::warn!(path = %path.display(), %error, "unreadable config metadata");
                AgentConfigMap::default()
            }),
            Err(_) => AgentConfigMap::default(),
        }
    }

    /// The effective config to report: the files on disk.
    pub(crate) fn effective_config(&self) -> EffectiveConfig {
        match self.read_config() {
            Ok(config) => EffectiveConfig {
                config_map: Some(config),
            },
            Err(error) => {
                tracing::warn!(%error, "cannot read the config directory");
                EffectiveConfig::default()
            }
        }
    }

    /// The config file a supervised child reads: the entry named `""` if
    /// there is one, else the first by name; `_default` (created empty)
    /// when there is no config at all.
    pub(crate) fn primary_config_file(&self) -> io::Result<PathBuf> {
        primary_config_file_in(&self.config_dir())
    }
}

/// Whether a config map has nothing to run: no files, or only empty ones.
pub(crate) fn is_empty_config(config: &AgentConfigMap) -> bool {
    config.config_map.values().all(|file| file.body.is_empty())
}

/// Replaces the config entry files in `dir` with the entries of `config`;
/// entry files not in the map are removed, other files left alone.
pub(crate) fn write_config_in(dir: &Path, config: &AgentConfigMap) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut keep = Vec::new();
    for (name, file) in &config.config_map {
        let file_name = file_name_for(name).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("bad name {name:?}"))
        })?;
        write_atomically(&dir.join(&file_name), &file.body)?;
        keep.push(file_name);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if entry_name_for(name).is_some() && !keep.iter().any(|kept| kept == name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The config entry files of `dir`, named as the server named them.
pub(crate) fn read_config_in(dir: &Path) -> io::Result<AgentConfigMap> {
    let mut config = AgentConfigMap::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(config),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(entry_name_for) else {
            continue;
        };
        if !entry.file_type()?.is_file() {
            continue;
        }
        let body = std::fs::read(entry.path())?;
        config.config_map.insert(
            name,
            AgentConfigObject {
                content_type: content_type_for(file_name.to_str().unwrap_or_default()),
                body: body.into(),
                role: String::new(),
            },
        );
    }
    Ok(config)
}

/// The main config file of `dir`: the entry named `""` if there is one,
/// else the first by name; `_default` (created empty) when there is none.
pub(crate) fn primary_config_file_in(dir: &Path) -> io::Result<PathBuf> {
    let config = read_config_in(dir)?;
    let name = if config.config_map.contains_key("") {
        Some(String::new())
    } else {
        config.config_map.keys().next().cloned()
    };
    match name.as_deref().and_then(file_name_for) {
        Some(file_name) => Ok(dir.join(file_name)),
        None => {
            let path = dir.join(UNNAMED_FILE);
            write_atomically(&path, b"")?;
            Ok(path)
        }
    }
}

/// Checks a remote config before anything is written: every name must be
/// usable as a file name, and no body may contain [`INVALID_MARKER`] (the
/// example's stand-in for "this config does not parse").
pub(crate) fn validate(config: &AgentConfigMap) -> Result<(), String> {
    for (name, file) in &config.config_map {
        if file_name_for(name).is_none() {
            return Err(format!(
                "config file name {name:?} is not a plain file name (letters, digits, '.', '_', '-'; not starting with '.' or '_')"
            ));
        }
        let marker = INVALID_MARKER.as_bytes();
        if file
            .body
            .windows(marker.len())
            .any(|window| window == marker)
        {
            return Err(format!(
                "config file {name:?} failed validation: it contains {INVALID_MARKER:?}"
            ));
        }
    }
    Ok(())
}

/// The file name for a config map entry; `None` if the name could escape
/// the directory or is otherwise unusable. Names come from the network.
fn file_name_for(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some(UNNAMED_FILE.to_owned());
    }
    let plain = name.len() <= MAX_NAME_LEN
        && !name.starts_with(['.', '_'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    plain.then(|| name.to_owned())
}

/// The inverse of [`file_name_for`]; `None` for files that are not config
/// entries (temporary files, foreign files).
fn entry_name_for(file_name: &str) -> Option<String> {
    if file_name == UNNAMED_FILE {
        return Some(String::new());
    }
    file_name_for(file_name).filter(|name| name == file_name)
}

fn content_type_for(file_name: &str) -> String {
    let extension = file_name.rsplit_once('.').map(|(_, ext)| ext);
    match extension {
        Some("yaml" | "yml") => "text/yaml",
        Some("json") => "application/json",
        Some("toml") => "application/toml",
        _ => "text/plain",
    }
    .to_owned()
}

/// Writes `path` so that readers see the old or the new content, never a
/// mix: a temporary file in the same directory, synced, then renamed.
pub(crate) fn write_atomically(path: &Path, content: &[u8]) -> io::Result<()> {
    write_atomically_with_mode(path, content, 0o666)
}

/// Like [`write_atomically`], a new file getting the permissions `mode`
/// (less the umask), as `open(2)` gives them.
pub(crate) fn write_atomically_with_mode(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn atomic_writes_replace_the_file_with_the_given_mode_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls").join("client.key");
        write_atomically_with_mode(&path, b"one", 0o600).unwrap();
        write_atomically_with_mode(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tls")).unwrap().count(),
            1
        );
    }

    fn map(entries: &[(&str, &str)]) -> AgentConfigMap {
        AgentConfigMap {
            config_map: entries
                .iter()
                .map(|(name, body)| {
                    (
                        (*name).to_owned(),
                        AgentConfigObject {
                            body: Bytes::copy_from_slice(body.as_bytes()),
                            content_type: "text/yaml".into(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn uid_is_persisted_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let uid = state.instance_uid().unwrap();
        assert_eq!(uid.to_uuid().get_version_num(), 7);
        assert_eq!(
            StateDir::open(dir.path()).unwrap().instance_uid().unwrap(),
            uid
        );
        let other = InstanceUid::new_v7();
        state.save_instance_uid(other).unwrap();
        assert_eq!(state.instance_uid().unwrap(), other);
    }

    #[test]
    fn config_round_trips_and_stale_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state
            .write_config(&map(&[("", "a: 1\n"), ("extra.yaml", "b: 2\n")]))
            .unwrap();
        let read = state.read_config().unwrap();
        assert_eq!(read.config_map.len(), 2);
        assert_eq!(&read.config_map[""].body[..], b"a: 1\n");
        assert_eq!(read.config_map["extra.yaml"].content_type, "text/yaml");
        assert_eq!(
            state.primary_config_file().unwrap(),
            state.config_dir().join("_default")
        );

        state.write_config(&map(&[("b.json", "{}")])).unwrap();
        let read = state.read_config().unwrap();
        assert_eq!(read.config_map.keys().collect::<Vec<_>>(), ["b.json"]);
        assert_eq!(
            state.primary_config_file().unwrap(),
            state.config_dir().join("b.json")
        );
    }

    #[test]
    fn roles_content_types_and_the_empty_key_survive_into_the_effective_config() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut sent = map(&[("", "a: 1\n"), ("as-written.txt", "a: ${A}\n")]);
        sent.config_map.get_mut("").unwrap().role = "expanded".into();
        sent.config_map.get_mut("as-written.txt").unwrap().role = "source".into();
        state.write_config(&sent).unwrap();
        // Content types come from the server, not from the file extension.
        assert_eq!(state.read_config().unwrap(), sent);
        assert_eq!(
            state.effective_config().config_map,
            Some(sent),
            "the agent reports what it was sent"
        );

        // A file placed by hand has no role and a guessed content type.
        std::fs::write(state.config_dir().join("extra.json"), "{}").unwrap();
        let read = state.read_config().unwrap();
        assert_eq!(
            read.config_map["extra.json"].content_type,
            "application/json"
        );
        assert_eq!(read.config_map["extra.json"].role, "");
        assert_eq!(read.config_map[""].role, "expanded");
    }

    #[test]
    fn names_from_the_network_never_become_paths() {
        for bad in [
            "../x",
            "a/b",
            ".hidden",
            "_default",
            "a\0b",
            "C:\\x",
            &"a".repeat(200),
        ] {
            assert!(validate(&map(&[(bad, "ok")])).is_err(), "{bad:?}");
        }
        assert!(validate(&map(&[("", "ok"), ("otel-collector.yaml", "x: 1")])).is_ok());
    }

    #[test]
    fn marker_fails_validation() {
        let error = validate(&map(&[("c.yaml", "receivers:\n  invalid: true\n")])).unwrap_err();
        assert!(error.contains("c.yaml"), "{error}");
    }

    #[test]
    fn remote_config_status_persists() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert!(state.remote_config_status().is_none());
        let status = RemoteConfigStatus {
            last_remote_config_hash: Bytes::from_static(b"hash"),
            status: 1,
            error_message: String::new(),
        };
        state.save_remote_config_status(&status).unwrap();
        assert_eq!(state.remote_config_status(), Some(status));
    }

    #[test]
    fn empty_configs_are_recognised() {
        assert!(is_empty_config(&AgentConfigMap::default()));
        assert!(is_empty_config(&map(&[("", ""), ("b.yaml", "")])));
        assert!(!is_empty_config(&map(&[("", ""), ("b.yaml", "x: 1")])));

        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert!(!state.has_config().unwrap());
        // The placeholder made for a child without config does not count.
        state.primary_config_file().unwrap();
        assert!(!state.has_config().unwrap());
        state.write_config(&map(&[("", "a: 1\n")])).unwrap();
        assert!(state.has_config().unwrap());
    }
}
