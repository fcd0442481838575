//! Sequence numbers, full-state requests and merging of status reports.

use opamp_proto::{AgentCapabilities, AgentToServer};

use crate::events::StatusChanges;
use crate::record::AgentRecord;

/// Why a `ReportFullState` is needed, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FullState {
    NotNeeded,
    /// `sequence_num` did not follow the previous one (SEQ-05).
    Gap,
    /// The server knows nothing about the agent and the message does not
    /// describe it: a reconnect after the server lost its state.
    NoDescription,
}

impl FullState {
    pub(super) fn requested(self) -> bool {
        self != Self::NotNeeded
    }
}

/// The sequence rules, tuned not to loop:
/// - after a `ReportFullState`, the next message is the new baseline and is
///   not checked (an agent that ignores the flag is asked once per gap);
/// - a repeated number is a resend (ERR-04), not a gap;
/// - number 0 with a description is a freshly started agent sending its
///   full first report;
/// - the "no description" request is made once per connection, so agents
///   that never send a description are not asked forever.
pub(super) fn needs_full_state(
    record: &mut AgentRecord,
    message: &AgentToServer,
    asked_for_description: bool,
) -> FullState {
    if record.awaiting_full_state {
        record.awaiting_full_state = false;
        return FullState::NotNeeded;
    }
    let sequence = message.sequence_num;
    if let Some(last) = record.last_sequence_num {
        let in_order = sequence == last.wrapping_add(1) || sequence == last;
        let fresh_start = sequence == 0 && message.agent_description.is_some();
        if !in_order && !fresh_start {
            return FullState::Gap;
        }
    }
    if record.status.description.is_none()
        && message.agent_description.is_none()
        && !asked_for_description
    {
        return FullState::NoDescription;
    }
    FullState::NotNeeded
}

/// Lays the sub-messages present in `message` over the stored status
/// (SEQ-02/03: omitted means unchanged) and says what changed.
pub(super) fn merge_status(record: &mut AgentRecord, message: &AgentToServer) -> StatusChanges {
    let status = &mut record.status;
    let mut changes = StatusChanges::empty();
    let capabilities = message.typed_capabilities();
    if status.capabilities != capabilities {
        status.capabilities = capabilities;
        changes |= StatusChanges::CAPABILITIES;
    }
    fn update<T: Clone + PartialEq>(
        slot: &mut Option<T>,
        incoming: &Option<T>,
        flag: StatusChanges,
        changes: &mut StatusChanges,
    ) {
        if let Some(value) = incoming {
            if slot.as_ref() != Some(value) {
                *slot = Some(value.clone());
                *changes |= flag;
            }
        }
    }
    update(
        &mut status.description,
        &message.agent_description,
        StatusChanges::DESCRIPTION,
        &mut changes,
    );
    update(
        &mut status.health,
        &message.health,
        StatusChanges::HEALTH,
        &mut changes,
    );
    update(
        &mut status.effective_config,
        &message.effective_config,
        StatusChanges::EFFECTIVE_CONFIG,
        &mut changes,
    );
    update(
        &mut status.remote_config_status,
        &message.remote_config_status,
        StatusChanges::REMOTE_CONFIG_STATUS,
        &mut changes,
    );
    update(
        &mut status.package_statuses,
        &message.package_statuses,
        StatusChanges::PACKAGE_STATUSES,
        &mut changes,
    );
    update(
        &mut status.custom_capabilities,
        &message.custom_capabilities,
        StatusChanges::CUSTOM_CAPABILITIES,
        &mut changes,
    );
    update(
        &mut status.connection_settings_status,
        &message.connection_settings_status,
        StatusChanges::CONNECTION_SETTINGS_STATUS,
        &mut changes,
    );
    if let Some(incoming) = &message.available_components {
        let known = status.available_components.as_ref();
        // A hash-only report of the same set keeps the list we have (AC-04/05).
        let same_set_hash_only = incoming.components.is_empty()
            && known.is_some_and(|known| known.hash == incoming.hash);
        if !same_set_hash_only && known != Some(incoming) {
            status.available_components = Some(incoming.clone());
            changes |= StatusChanges::AVAILABLE_COMPONENTS;
        }
    }
    changes
}

/// Whether to set `ReportAvailableComponents`: the agent reports components,
/// sent a hash we have no list for, and we have not asked for that hash yet
/// (AC-04).
pub(super) fn wants_component_list(record: &mut AgentRecord) -> bool {
    let status = &record.status;
    if !status
        .capabilities
        .contains(AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS)
    {
        return false;
    }
    let Some(components) = &status.available_components else {
        return false;
    };
    if components.hash.is_empty()
        || !components.components.is_empty()
        || record.requested_components_hash.as_ref() == Some(&components.hash)
    {
        return false;
    }
    record.requested_components_hash = Some(components.hash.clone());
    true
}
