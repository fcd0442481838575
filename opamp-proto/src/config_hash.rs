use prost::Message;
use sha2::{Digest, Sha256};

use crate::generated::AgentConfigMap;

/// A stable SHA-256 over an [`AgentConfigMap`], for `AgentRemoteConfig.config_hash`.
///
/// The spec leaves the hash opaque (the agent only echoes it back), so any
/// stable function works; this one hashes each object's key, content type and
/// body, in key order, each length-prefixed so that no two different maps
/// feed the same bytes to the digest. Equal maps give equal hashes in every
/// process and version of this crate.
///
/// The `role` of each object is part of the hash. The hash names the
/// configuration the agent is told to run, and the role is part of that
/// instruction: the same body offered as the main configuration or as a
/// fragment is a different configuration, and an agent or server that
/// compares hashes to skip an unchanged offer must not skip a change of
/// role. Maps in which no object has a role hash exactly as they did before
/// roles existed (layout "v1"), so upgrading does not re-push every stored
/// configuration; a map with at least one role uses layout "v2", which hashes
/// every object's role too (empty ones included) after a different prefix, so
/// the two layouts never feed the digest the same bytes.
///
/// ```
/// use opamp_proto::{config_hash, AgentConfigMap, AgentConfigObject};
///
/// let mut config = AgentConfigMap::default();
/// config.config_map.insert(
///     "collector.yaml".into(),
///     AgentConfigObject {
///         body: "receivers: {}".into(),
///         content_type: "text/yaml".into(),
///         ..Default::default()
///     },
/// );
/// let hash = config_hash(&config);
/// assert_eq!(hash.len(), 32);
/// assert_eq!(hash, config_hash(&config.clone()));
///
/// let mut with_role = config.clone();
/// with_role.config_map.get_mut("collector.yaml").unwrap().role = "main".into();
/// assert_ne!(hash, config_hash(&with_role));
/// ```
pub fn config_hash(config: &AgentConfigMap) -> bytes::Bytes {
    let with_roles = config
        .config_map
        .values()
        .any(|object| !object.role.is_empty());
    let mut digest = Sha256::new();
    digest.update(if with_roles {
        b"opamp-rs config v2"
    } else {
        b"opamp-rs config v1"
    });
    // BTreeMap iterates in key order, so the result does not depend on insertion order.
    for (key, object) in &config.config_map {
        let parts = [
            key.as_bytes(),
            object.content_type.as_bytes(),
            object.body.as_ref(),
            object.role.as_bytes(),
        ];
        let used = if with_roles { &parts[..] } else { &parts[..3] };
        for part in used {
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
    use crate::generated::AgentConfigObject;

    fn object(body: &str, content_type: &str) -> AgentConfigObject {
        AgentConfigObject {
            body: body.to_owned().into(),
            content_type: content_type.into(),
            role: String::new(),
        }
    }

    fn with_role(body: &str, content_type: &str, role: &str) -> AgentConfigObject {
        AgentConfigObject {
            role: role.into(),
            ..object(body, content_type)
        }
    }

    #[test]
    fn rcfg_hash_is_independent_of_insertion_order() {
        let mut a = AgentConfigMap::default();
        a.config_map.insert("x".into(), object("1", "text/yaml"));
        a.config_map.insert("y".into(), object("2", "text/yaml"));
        let mut b = AgentConfigMap::default();
        b.config_map.insert("y".into(), object("2", "text/yaml"));
        b.config_map.insert("x".into(), object("1", "text/yaml"));
        assert_eq!(config_hash(&a), config_hash(&b));
    }

    #[test]
    fn rcfg_hash_changes_with_any_part() {
        let mut base = AgentConfigMap::default();
        base.config_map
            .insert("x".into(), object("ab", "text/yaml"));
        let h = config_hash(&base);

        let mut other = base.clone();
        other.config_map.get_mut("x").unwrap().content_type = "application/json".into();
        assert_ne!(h, config_hash(&other));

        let mut role = base.clone();
        role.config_map.get_mut("x").unwrap().role = "main".into();
        assert_ne!(h, config_hash(&role));

        // Moving bytes between name and body must not collide.
        let mut shifted = AgentConfigMap::default();
        shifted
            .config_map
            .insert("xa".into(), object("b", "text/yaml"));
        assert_ne!(h, config_hash(&shifted));

        assert_ne!(h, config_hash(&AgentConfigMap::default()));
    }

    #[test]
    fn rcfg_04_hash_tells_roles_apart_and_moved_roles_do_not_collide() {
        let mut main = AgentConfigMap::default();
        main.config_map
            .insert("a".into(), with_role("b", "t", "main"));
        let mut fragment = AgentConfigMap::default();
        fragment
            .config_map
            .insert("a".into(), with_role("b", "t", "fragment"));
        assert_ne!(config_hash(&main), config_hash(&fragment));

        // Were a role appended only when present, these two maps would feed
        // the digest the same parts: a, t, b, z, b, c, d.
        let mut first = AgentConfigMap::default();
        first
            .config_map
            .insert("a".into(), with_role("b", "t", "z"));
        first.config_map.insert("b".into(), object("d", "c"));
        let mut second = AgentConfigMap::default();
        second.config_map.insert("a".into(), object("b", "t"));
        second
            .config_map
            .insert("z".into(), with_role("c", "b", "d"));
        assert_ne!(config_hash(&first), config_hash(&second));
    }

    #[test]
    fn known_answer_keeps_the_hash_stable_across_versions() {
        // If this changes, every deployed server re-pushes every config.
        let mut config = AgentConfigMap::default();
        config
            .config_map
            .insert(String::new(), object("key: value\n", "text/yaml"));
        assert_eq!(hex::encode(config_hash(&config)), KNOWN_HASH);
    }

    #[test]
    fn known_answers_with_roles() {
        let mut single = AgentConfigMap::default();
        single.config_map.insert(
            String::new(),
            with_role("key: value\n", "text/yaml", "main"),
        );
        assert_eq!(hex::encode(config_hash(&single)), KNOWN_HASH_WITH_ROLE);

        // One object with a role switches every object, role-less ones too,
        // to the v2 layout.
        let mut two_views = AgentConfigMap::default();
        two_views.config_map.insert(
            String::new(),
            with_role("exporters: {}\n", "text/yaml", "effective"),
        );
        two_views
            .config_map
            .insert("config.yaml".into(), object("exporters: {}\n", "text/yaml"));
        assert_eq!(hex::encode(config_hash(&two_views)), KNOWN_HASH_TWO_VIEWS);
    }

    // Computed independently (Python hashlib) from the documented layouts.
    const KNOWN_HASH: &str = "be505b4d368526d7aef7c0345ddcba34572224dd8ebdb4eb9aad15a33b5bae67";
    const KNOWN_HASH_WITH_ROLE: &str =
        "57271dea089bc5f839a8ea3cd0016461e3dc49e79e42444d5d45e35f6511f55c";
    const KNOWN_HASH_TWO_VIEWS: &str =
        "d9d27b411718c082d87b5703cbc32f1f30b8918106c9e77ee6cc0a21647e2079";
}
