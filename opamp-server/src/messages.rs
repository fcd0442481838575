//! Building, merging and checking `ServerToAgent` messages.

use std::time::Duration;

use opamp_proto::{
    AgentCapabilities, CustomCapabilities, InstanceUid, RetryInfo, ServerErrorResponse,
    ServerErrorResponseType, ServerToAgent, server_error_response,
};

use crate::error::SendError;

/// A `ServerToAgent` that tells the agent the server is overloaded
/// (`error_response.type = UNAVAILABLE`, WS-22), optionally with how long to
/// wait before reconnecting (`retry_info`, ERR-07).
///
/// Return it from [`Callbacks::on_message`](crate::Callbacks::on_message) to
/// throttle an agent. The server fills in `instance_uid`.
///
/// ```
/// use std::time::Duration;
/// use opamp_proto::ServerErrorResponseType;
///
/// let reply = opamp_server::unavailable_response(Some(Duration::from_secs(30)));
/// let error = reply.error_response.unwrap();
/// assert_eq!(error.r#type(), ServerErrorResponseType::Unavailable);
/// ```
pub fn unavailable_response(retry_after: Option<Duration>) -> ServerToAgent {
    let details = retry_after.map(|delay| {
        server_error_response::Details::RetryInfo(RetryInfo {
            retry_after_nanoseconds: u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
        })
    });
    ServerToAgent {
        error_response: Some(ServerErrorResponse {
            r#type: ServerErrorResponseType::Unavailable as i32,
            error_message: "server overloaded, retry later".into(),
            details,
        }),
        ..Default::default()
    }
}

/// A `ServerToAgent` rejecting a malformed message (`BAD_REQUEST`, ERR-02),
/// which the agent must not resend (ERR-03).
///
/// ```
/// let reply = opamp_server::bad_request_response("instance_uid must be 16 bytes");
/// assert_eq!(reply.error_response.unwrap().error_message, "instance_uid must be 16 bytes");
/// ```
pub fn bad_request_response(message: impl Into<String>) -> ServerToAgent {
    ServerToAgent {
        error_response: Some(ServerErrorResponse {
            r#type: ServerErrorResponseType::BadRequest as i32,
            error_message: message.into(),
            details: None,
        }),
        ..Default::default()
    }
}

/// Lays `overlay` over `base`: every field set in `overlay` wins, flags are
/// OR-ed. Each `ServerToAgent` carries one custom message, so a second one
/// replaces the first.
pub(crate) fn merge(base: &mut ServerToAgent, overlay: ServerToAgent) {
    let ServerToAgent {
        instance_uid,
        error_response,
        remote_config,
        connection_settings,
        packages_available,
        flags,
        capabilities,
        agent_identification,
        command,
        custom_capabilities,
        custom_message,
    } = overlay;
    if !instance_uid.is_empty() {
        base.instance_uid = instance_uid;
    }
    replace_if_some(&mut base.error_response, error_response);
    replace_if_some(&mut base.remote_config, remote_config);
    replace_if_some(&mut base.connection_settings, connection_settings);
    replace_if_some(&mut base.packages_available, packages_available);
    base.flags |= flags;
    if capabilities != 0 {
        base.capabilities = capabilities;
    }
    replace_if_some(&mut base.agent_identification, agent_identification);
    replace_if_some(&mut base.command, command);
    replace_if_some(&mut base.custom_capabilities, custom_capabilities);
    if custom_message.is_some() && base.custom_message.is_some() {
        tracing::debug!("two custom messages for one ServerToAgent: the later one wins");
    }
    replace_if_some(&mut base.custom_message, custom_message);
}

fn replace_if_some<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}

/// True when the message says nothing beyond `instance_uid` (and the
/// connection-level `capabilities` / `custom_capabilities`).
pub(crate) fn is_bare(message: &ServerToAgent) -> bool {
    message.error_response.is_none()
        && message.remote_config.is_none()
        && message.connection_settings.is_none()
        && message.packages_available.is_none()
        && message.flags == 0
        && message.agent_identification.is_none()
        && message.command.is_none()
        && message.custom_message.is_none()
}

/// What an agent must have announced to receive a part of a `ServerToAgent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Requirement {
    Capability(AgentCapabilities),
    CustomCapability(String),
}

/// The first part of `message` the agent cannot accept (CAP-09, RCFG-02,
/// PKG-01, CS-01, CMD-01, CUS-04), if any. `custom` is the agent's latest
/// `custom_capabilities` report.
pub(crate) fn unmet_requirement(
    capabilities: AgentCapabilities,
    custom: Option<&CustomCapabilities>,
    message: &ServerToAgent,
) -> Option<Requirement> {
    requirements(message)
        .find(|needed| !capabilities.contains(*needed))
        .map(Requirement::Capability)
        .or_else(|| {
            let wanted = &message.custom_message.as_ref()?.capability;
            let announced =
                custom.is_some_and(|list| list.capabilities.iter().any(|c| c == wanted));
            (!announced).then(|| Requirement::CustomCapability(wanted.clone()))
        })
}

/// [`unmet_requirement`] as the error refusing `message` to the agent `uid`.
pub(crate) fn check_accepted(
    uid: InstanceUid,
    capabilities: AgentCapabilities,
    custom: Option<&CustomCapabilities>,
    message: &ServerToAgent,
) -> Result<(), SendError> {
    match unmet_requirement(capabilities, custom, message) {
        None => Ok(()),
        Some(Requirement::Capability(capability)) => {
            Err(SendError::NotAccepted { uid, capability })
        }
        Some(Requirement::CustomCapability(capability)) => {
            Err(SendError::CustomCapabilityNotAnnounced { uid, capability })
        }
    }
}

/// Every agent capability the offers in `message` need.
fn requirements(message: &ServerToAgent) -> impl Iterator<Item = AgentCapabilities> + '_ {
    // One line a part: whether the message offers it => the capability it needs.
    macro_rules! needs {
        ($offered:expr => $needed:ident) => {
            $offered.then_some(AgentCapabilities::$needed)
        };
    }
    let settings = message.connection_settings.as_ref();
    [
        needs!(message.remote_config.is_some() => ACCEPTS_REMOTE_CONFIG),
        needs!(message.packages_available.is_some() => ACCEPTS_PACKAGES),
        needs!(message.command.is_some() => ACCEPTS_RESTART_COMMAND),
        needs!(settings.is_some_and(|s| s.opamp.is_some()) => ACCEPTS_OPAMP_CONNECTION_SETTINGS),
        needs!(settings.is_some_and(|s| s.own_metrics.is_some()) => REPORTS_OWN_METRICS),
        needs!(settings.is_some_and(|s| s.own_traces.is_some()) => REPORTS_OWN_TRACES),
        needs!(settings.is_some_and(|s| s.own_logs.is_some()) => REPORTS_OWN_LOGS),
        needs!(settings.is_some_and(|s| !s.other_connections.is_empty())
            => ACCEPTS_OTHER_CONNECTION_SETTINGS),
    ]
    .into_iter()
    .flatten()
}

/// Removes every part of `message` the agent cannot accept (CAP-09), logging
/// each removal. Used on callback replies, which have nowhere to return an
/// error to.
pub(crate) fn strip_unaccepted(
    capabilities: AgentCapabilities,
    custom: Option<&CustomCapabilities>,
    message: &mut ServerToAgent,
) {
    let lacks = |bit: AgentCapabilities| !capabilities.contains(bit);
    let mut dropped = Vec::new();
    // One line a part: the part => the capability it needs, its name in the log.
    macro_rules! strip {
        ($part:expr => $needed:ident, $name:literal) => {
            if $part.is_some() && lacks(AgentCapabilities::$needed) {
                $part = None;
                dropped.push($name);
            }
        };
    }
    strip!(message.remote_config => ACCEPTS_REMOTE_CONFIG, "remote_config");
    strip!(message.packages_available => ACCEPTS_PACKAGES, "packages_available");
    strip!(message.command => ACCEPTS_RESTART_COMMAND, "command");
    if let Some(settings) = message.connection_settings.as_mut() {
        strip!(settings.opamp => ACCEPTS_OPAMP_CONNECTION_SETTINGS, "connection_settings.opamp");
        strip!(settings.own_metrics => REPORTS_OWN_METRICS, "connection_settings.own_metrics");
        strip!(settings.own_traces => REPORTS_OWN_TRACES, "connection_settings.own_traces");
        strip!(settings.own_logs => REPORTS_OWN_LOGS, "connection_settings.own_logs");
        if !settings.other_connections.is_empty()
            && lacks(AgentCapabilities::ACCEPTS_OTHER_CONNECTION_SETTINGS)
        {
            settings.other_connections.clear();
            dropped.push("connection_settings.other_connections");
        }
        let empty = settings.opamp.is_none()
            && settings.own_metrics.is_none()
            && settings.own_traces.is_none()
            && settings.own_logs.is_none()
            && settings.other_connections.is_empty();
        if empty {
            message.connection_settings = None;
        }
    }
    if let Some(custom_message) = &message.custom_message {
        let announced =
            custom.is_some_and(|list| list.capabilities.contains(&custom_message.capability));
        if !announced {
            message.custom_message = None;
            dropped.push("custom_message");
        }
    }
    if !dropped.is_empty() {
        tracing::warn!(
            ?dropped,
            agent_capabilities = ?capabilities,
            "removed offers the agent did not announce it accepts (CAP-09)"
        );
    }
}

/// A message with `error_response` carries nothing else but `instance_uid`
/// and the connection-level capabilities (MSG-05, AMB-04).
pub(crate) fn enforce_error_exclusivity(message: &mut ServerToAgent) {
    if message.error_response.is_none() {
        return;
    }
    let had_more = !is_bare(&ServerToAgent {
        error_response: None,
        ..message.clone()
    });
    if had_more {
        tracing::debug!("error_response set: other offers in the same reply are dropped (MSG-05)");
    }
    *message = ServerToAgent {
        instance_uid: std::mem::take(&mut message.instance_uid),
        error_response: message.error_response.take(),
        capabilities: message.capabilities,
        custom_capabilities: message.custom_capabilities.take(),
        ..Default::default()
    };
}

/// Splits a message carrying `command` plus other offers into the offers and
/// a command-only message, since an agent ignores everything else next to a
/// command (CMD-02, CMD-03). Either half may be absent.
pub(crate) fn split_command(
    mut message: ServerToAgent,
) -> (Option<ServerToAgent>, Option<ServerToAgent>) {
    let Some(command) = message.command.take() else {
        return (Some(message), None);
    };
    let command_only = ServerToAgent {
        instance_uid: message.instance_uid.clone(),
        command: Some(command),
        ..Default::default()
    };
    if is_bare(&message) && message.custom_capabilities.is_none() && message.capabilities == 0 {
        (None, Some(command_only))
    } else {
        (Some(message), Some(command_only))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opamp_proto::{
        AgentRemoteConfig, CommandType, ConnectionSettingsOffers, CustomMessage,
        OpAmpConnectionSettings, ServerToAgentCommand, TelemetryConnectionSettings,
    };

    fn with_everything() -> ServerToAgent {
        ServerToAgent {
            remote_config: Some(AgentRemoteConfig::default()),
            packages_available: Some(Default::default()),
            command: Some(ServerToAgentCommand {
                r#type: CommandType::Restart as i32,
            }),
            connection_settings: Some(ConnectionSettingsOffers {
                opamp: Some(OpAmpConnectionSettings::default()),
                own_metrics: Some(TelemetryConnectionSettings::default()),
                ..Default::default()
            }),
            custom_message: Some(CustomMessage {
                capability: "io.x.cap".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn rcfg_02_cap_09_offers_need_matching_agent_capabilities() {
        let message = with_everything();
        let none = AgentCapabilities::REPORTS_STATUS;
        assert_eq!(
            unmet_requirement(none, None, &message),
            Some(Requirement::Capability(
                AgentCapabilities::ACCEPTS_REMOTE_CONFIG
            ))
        );
        let all = AgentCapabilities::all();
        assert_eq!(
            unmet_requirement(all, None, &message),
            Some(Requirement::CustomCapability("io.x.cap".into()))
        );
        let custom = CustomCapabilities {
            capabilities: vec!["io.x.cap".into()],
        };
        assert_eq!(unmet_requirement(all, Some(&custom), &message), None);

        let mut stripped = message.clone();
        strip_unaccepted(AgentCapabilities::REPORTS_OWN_METRICS, None, &mut stripped);
        assert!(stripped.remote_config.is_none());
        assert!(stripped.packages_available.is_none());
        assert!(stripped.command.is_none());
        assert!(stripped.custom_message.is_none());
        let settings = stripped
            .connection_settings
            .expect("own_metrics is accepted");
        assert!(
            settings.opamp.is_none(),
            "CS-01: opamp needs AcceptsOpAMPConnectionSettings"
        );
        assert!(settings.own_metrics.is_some());

        let mut nothing = message;
        strip_unaccepted(AgentCapabilities::REPORTS_STATUS, None, &mut nothing);
        assert!(is_bare(&nothing));
    }

    #[test]
    fn merge_overlays_fields_and_ors_flags() {
        let mut base = ServerToAgent {
            instance_uid: vec![1; 16].into(),
            flags: 1,
            ..Default::default()
        };
        merge(
            &mut base,
            ServerToAgent {
                flags: 2,
                remote_config: Some(Default::default()),
                ..Default::default()
            },
        );
        assert_eq!(base.flags, 3);
        assert_eq!(base.instance_uid.len(), 16);
        assert!(base.remote_config.is_some());
    }

    #[test]
    fn msg_05_error_response_excludes_other_fields() {
        let mut message = with_everything();
        message.instance_uid = vec![7; 16].into();
        message.capabilities = 1;
        message.flags = 1;
        message.error_response = bad_request_response("nope").error_response;
        enforce_error_exclusivity(&mut message);
        assert_eq!(message.instance_uid.len(), 16);
        assert_eq!(message.capabilities, 1, "AMB-04: capabilities may stay");
        assert_eq!(message.flags, 0);
        assert!(message.remote_config.is_none() && message.command.is_none());
    }

    #[test]
    fn cmd_02_command_travels_alone() {
        let (rest, command) = split_command(with_everything());
        let command = command.unwrap();
        assert!(command.command.is_some());
        assert!(command.remote_config.is_none() && command.connection_settings.is_none());
        assert!(rest.unwrap().command.is_none());

        let alone = ServerToAgent {
            command: Some(Default::default()),
            ..Default::default()
        };
        let (rest, command) = split_command(alone);
        assert!(rest.is_none());
        assert!(command.is_some());
    }

    #[test]
    fn ws_22_unavailable_carries_retry_info() {
        let reply = unavailable_response(Some(Duration::from_millis(1500)));
        let error = reply.error_response.unwrap();
        assert_eq!(error.r#type(), ServerErrorResponseType::Unavailable);
        assert_eq!(
            error.details,
            Some(server_error_response::Details::RetryInfo(RetryInfo {
                retry_after_nanoseconds: 1_500_000_000
            }))
        );
        assert!(
            unavailable_response(None)
                .error_response
                .unwrap()
                .details
                .is_none()
        );
    }
}
