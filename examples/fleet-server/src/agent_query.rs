//! Server-side filtering and paging of the agent list
//! (`GET /api/agents?limit=...`): the filters, the opaque cursor, the
//! status counts, and a pager that the redb scan (and the PostgreSQL
//! fallback for attributes without a column) feed records in uid order.

use std::collections::HashSet;

use base64::Engine as _;
use opamp_proto::{AnyValue, InstanceUid};
use opamp_server::{AgentRecord, RemoteConfigState};
use serde::Serialize;

/// Page size when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Largest page size accepted.
pub(crate) const MAX_LIMIT: usize = 1000;

/// Description attributes the text search looks at, besides the uid. The
/// same ones `opamp-server-postgres` keeps as columns, so both stores
/// search alike.
pub(crate) const SEARCHED_ATTRIBUTES: [&str; 6] = [
    "service.name",
    "service.namespace",
    "service.version",
    "service.instance.id",
    "host.name",
    "os.type",
];

/// Where the config this server wants the agent to run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigState {
    /// No remote config is desired for the agent.
    None,
    Pending,
    Applying,
    Applied,
    Failed,
}

impl ConfigState {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "none" => Self::None,
            "pending" => Self::Pending,
            "applying" => Self::Applying,
            "applied" => Self::Applied,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    fn of(record: &AgentRecord) -> Self {
        match record.remote_config_state() {
            None => Self::None,
            Some(RemoteConfigState::Applying) => Self::Applying,
            Some(RemoteConfigState::Applied) => Self::Applied,
            Some(RemoteConfigState::Failed { .. }) => Self::Failed,
            Some(_) => Self::Pending,
        }
    }
}

/// The agent's reported health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Healthy,
    Unhealthy,
    /// The agent reported no health.
    Unknown,
}

impl Health {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "healthy" => Self::Healthy,
            "unhealthy" => Self::Unhealthy,
            "unknown" => Self::Unknown,
            _ => return None,
        })
    }

    fn of(record: &AgentRecord) -> Self {
        match &record.status.health {
            None => Self::Unknown,
            Some(health) if health.healthy => Self::Healthy,
            Some(_) => Self::Unhealthy,
        }
    }
}

/// One page request: every filter given must match.
#[derive(Debug, Clone)]
pub(crate) struct AgentQuery {
    pub(crate) connected: Option<bool>,
    pub(crate) config: Option<ConfigState>,
    pub(crate) health: Option<Health>,
    /// A description attribute (identifying first, else non-identifying)
    /// whose value, as text, equals the given one.
    pub(crate) attribute: Option<(String, String)>,
    /// Lower-case text the uid or a searched attribute must contain.
    pub(crate) text: Option<String>,
    /// The page starts after this uid (the decoded cursor).
    pub(crate) after: Option<InstanceUid>,
    pub(crate) limit: usize,
}

impl Default for AgentQuery {
    fn default() -> Self {
        Self {
            connected: None,
            config: None,
            health: None,
            attribute: None,
            text: None,
            after: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// The value of a description attribute as text: identifying first, as the
/// PostgreSQL columns take it.
pub(crate) fn attribute_text(record: &AgentRecord, key: &str) -> Option<String> {
    let description = record.status.description.as_ref()?;
    description
        .identifying(key)
        .or_else(|| description.non_identifying(key))
        .map(AnyValue::to_display_string)
}

impl AgentQuery {
    /// Whether `record` passes every filter except connection, config and
    /// health (which the caller has as facets).
    fn matches_description(&self, record: &AgentRecord) -> bool {
        if let Some((key, value)) = &self.attribute
            && attribute_text(record, key).as_deref() != Some(value.as_str())
        {
            return false;
        }
        if let Some(text) = &self.text {
            let in_uid = record.uid.to_string().contains(text.as_str());
            let in_attribute = || {
                SEARCHED_ATTRIBUTES.iter().any(|key| {
                    attribute_text(record, key)
                        .is_some_and(|value| value.to_lowercase().contains(text.as_str()))
                })
            };
            if !in_uid && !in_attribute() {
                return false;
            }
        }
        true
    }
}

/// How many agents matching the filters are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct StatusCounts {
    pub(crate) total: u64,
    pub(crate) connected: u64,
    pub(crate) disconnected: u64,
    pub(crate) config: ConfigCounts,
    pub(crate) health: HealthCounts,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ConfigCounts {
    pub(crate) none: u64,
    pub(crate) pending: u64,
    pub(crate) applying: u64,
    pub(crate) applied: u64,
    pub(crate) failed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct HealthCounts {
    pub(crate) healthy: u64,
    pub(crate) unhealthy: u64,
    pub(crate) unknown: u64,
}

/// One page of agents in uid order, the cursor of the next page, and the
/// counts over every agent the filters match (not just this page).
#[derive(Debug, Default)]
pub(crate) struct AgentPage {
    pub(crate) records: Vec<AgentRecord>,
    pub(crate) next: Option<InstanceUid>,
    pub(crate) counts: StatusCounts,
}

/// Builds a page from records offered in ascending uid order, counting as
/// it goes; only the page's records are kept.
pub(crate) struct Pager<'a> {
    query: &'a AgentQuery,
    page: AgentPage,
    full: bool,
}

impl<'a> Pager<'a> {
    pub(crate) fn new(query: &'a AgentQuery) -> Self {
        Self {
            query,
            page: AgentPage::default(),
            full: false,
        }
    }

    /// Counts `record` if it matches and keeps it if it belongs on the page.
    pub(crate) fn offer(&mut self, record: AgentRecord, connected: bool) {
        let query = self.query;
        if query.connected.is_some_and(|wanted| wanted != connected) {
            return;
        }
        let config = ConfigState::of(&record);
        if query.config.is_some_and(|wanted| wanted != config) {
            return;
        }
        let health = Health::of(&record);
        if query.health.is_some_and(|wanted| wanted != health) {
            return;
        }
        if !query.matches_description(&record) {
            return;
        }
        let counts = &mut self.page.counts;
        counts.total += 1;
        if connected {
            counts.connected += 1;
        } else {
            counts.disconnected += 1;
        }
        match config {
            ConfigState::None => counts.config.none += 1,
            ConfigState::Pending => counts.config.pending += 1,
            ConfigState::Applying => counts.config.applying += 1,
            ConfigState::Applied => counts.config.applied += 1,
            ConfigState::Failed => counts.config.failed += 1,
        }
        match health {
            Health::Healthy => counts.health.healthy += 1,
            Health::Unhealthy => counts.health.unhealthy += 1,
            Health::Unknown => counts.health.unknown += 1,
        }
        if query.after.is_some_and(|after| record.uid <= after) {
            return;
        }
        if self.page.records.len() < query.limit {
            self.page.records.push(record);
        } else if !self.full {
            // A match beyond a full page: there is a next page.
            self.full = true;
            self.page.next = self.page.records.last().map(|last| last.uid);
        }
    }

    pub(crate) fn finish(self) -> AgentPage {
        self.page
    }
}

/// Connection state for the redb store: the agents connected to this
/// instance (the only one).
pub(crate) type ConnectedSet = HashSet<InstanceUid>;

const CURSOR_VERSION: u8 = 1;

/// The opaque cursor for "after `uid`".
pub(crate) fn encode_cursor(uid: InstanceUid) -> String {
    let mut bytes = Vec::with_capacity(17);
    bytes.push(CURSOR_VERSION);
    bytes.extend_from_slice(uid.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The uid a cursor from [`encode_cursor`] stands for.
pub(crate) fn decode_cursor(cursor: &str) -> Option<InstanceUid> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let (&version, uid) = bytes.split_first()?;
    if version != CURSOR_VERSION {
        return None;
    }
    let uid: [u8; 16] = uid.try_into().ok()?;
    Some(InstanceUid::from_array(uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let uid = InstanceUid::from_array([7; 16]);
        assert_eq!(decode_cursor(&encode_cursor(uid)), Some(uid));
        assert_eq!(decode_cursor("not a cursor!"), None);
        assert_eq!(decode_cursor(""), None);
        // Right length, wrong version byte.
        let mut other = vec![9u8];
        other.extend_from_slice(&[7; 16]);
        let foreign = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(other);
        assert_eq!(decode_cursor(&foreign), None);
    }

    #[test]
    fn the_pager_counts_every_match_and_keeps_one_page() {
        let query = AgentQuery {
            limit: 2,
            after: Some(InstanceUid::from_array([1; 16])),
            ..AgentQuery::default()
        };
        let mut pager = Pager::new(&query);
        for n in 1..=5u8 {
            let record = AgentRecord::new(InstanceUid::from_array([n; 16]), std::time::UNIX_EPOCH);
            pager.offer(record, n % 2 == 0);
        }
        let page = pager.finish();
        assert_eq!(page.counts.total, 5, "counts ignore the cursor");
        assert_eq!(page.counts.connected, 2);
        assert_eq!(page.counts.health.unknown, 5);
        assert_eq!(page.counts.config.none, 5);
        let uids: Vec<_> = page.records.iter().map(|r| r.uid.as_bytes()[0]).collect();
        assert_eq!(uids, [2, 3]);
        assert_eq!(page.next, Some(InstanceUid::from_array([3; 16])));
    }
}
