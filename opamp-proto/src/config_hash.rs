use prost::Message;
use sha2::{Digest, Sha256};

use crate::generated::AgentConfigMap;

/// A stable SHA-256 over an [`AgentConfigMap`], for `AgentRemoteConfig.config_hash`.
///
/// The spec leaves the hash opaque (the agent only echoes it back), so any
/// stable function works; this one hashes each file's name, content type and
/// body, in name order, each length-prefixed so that no two different maps
/// feed the same bytes to the digest. Equal maps give equal hashes in every
/// process and version of this crate.
///
/// ```
/// use opamp_proto::{config_hash, AgentConfigFile, AgentConfigMap};
///
/// let mut config = AgentConfigMap::default();
/// config.config_map.insert(
///     "collector.yaml".into(),
///     AgentConfigFile { body: "receivers: {}".into(), content_type: "text/yaml".into() },
/// );
/// let hash = config_hash(&config);
/// assert_eq!(hash.len(), 32);
/// assert_eq!(hash, config_hash(&config.clone()));
/// ```
pub fn config_hash(config: &AgentConfigMap) -> bytes::Bytes {
    let mut digest = Sha256::new();
    digest.update(b"opamp-rs config v1");
    // BTreeMap iterates in key order, so the result does not depend on insertion order.
    for (name, file) in &config.config_map {
        for part in [
            name.as_bytes(),
            file.content_type.as_bytes(),
            file.body.as_ref(),
        ] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    bytes::Bytes::copy_from_slice(&digest.finalize())
}

/// SHA-256 of any message's deterministic encoding: a convenient hash for
/// `ConnectionSettingsOffers.hash`, `PackagesAvailable.all_packages_hash` and
/// `AvailableComponents.hash`. Maps encode in key order, so equal messages
/// hash equal.
///
/// ```
/// use opamp_proto::{message_hash, PackagesAvailable};
///
/// assert_eq!(message_hash(&PackagesAvailable::default()).len(), 32);
/// ```
pub fn message_hash(message: &impl Message) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&Sha256::digest(message.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generated::AgentConfigFile;

    fn file(body: &str, content_type: &str) -> AgentConfigFile {
        AgentConfigFile {
            body: body.to_owned().into(),
            content_type: content_type.into(),
        }
    }

    #[test]
    fn rcfg_hash_is_independent_of_insertion_order() {
        let mut a = AgentConfigMap::default();
        a.config_map.insert("x".into(), file("1", "text/yaml"));
        a.config_map.insert("y".into(), file("2", "text/yaml"));
        let mut b = AgentConfigMap::default();
        b.config_map.insert("y".into(), file("2", "text/yaml"));
        b.config_map.insert("x".into(), file("1", "text/yaml"));
        assert_eq!(config_hash(&a), config_hash(&b));
    }

    #[test]
    fn rcfg_hash_changes_with_any_part() {
        let mut base = AgentConfigMap::default();
        base.config_map.insert("x".into(), file("ab", "text/yaml"));
        let h = config_hash(&base);

        let mut other = base.clone();
        other.config_map.get_mut("x").unwrap().content_type = "application/json".into();
        assert_ne!(h, config_hash(&other));

        // Moving bytes between name and body must not collide.
        let mut shifted = AgentConfigMap::default();
        shifted
            .config_map
            .insert("xa".into(), file("b", "text/yaml"));
        assert_ne!(h, config_hash(&shifted));

        assert_ne!(h, config_hash(&AgentConfigMap::default()));
    }

    #[test]
    fn known_answer_keeps_the_hash_stable_across_versions() {
        // If this changes, every deployed server re-pushes every config.
        let mut config = AgentConfigMap::default();
        config
            .config_map
            .insert(String::new(), file("key: value\n", "text/yaml"));
        assert_eq!(hex::encode(config_hash(&config)), KNOWN_HASH,);
    }

    // Computed independently (Python hashlib) from the documented layout.
    const KNOWN_HASH: &str = "be505b4d368526d7aef7c0345ddcba34572224dd8ebdb4eb9aad15a33b5bae67";
}
