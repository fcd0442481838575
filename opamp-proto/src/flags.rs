//! Typed views of the four bitmask fields. On the wire they are plain
//! `uint64`; the generated enums only name single bits. Unknown bits from a
//! newer peer are kept (`from_bits_retain`), never dropped or rejected.

use bitflags::bitflags;

bitflags! {
    /// `AgentToServer.capabilities`: what the agent can do.
    ///
    /// ```
    /// use opamp_proto::AgentCapabilities;
    ///
    /// let caps = AgentCapabilities::REPORTS_STATUS | AgentCapabilities::ACCEPTS_REMOTE_CONFIG;
    /// assert_eq!(caps.bits(), 0x3);
    /// assert!(caps.contains(AgentCapabilities::ACCEPTS_REMOTE_CONFIG));
    /// assert_eq!(format!("{caps:?}"), "AgentCapabilities(REPORTS_STATUS | ACCEPTS_REMOTE_CONFIG)");
    ///
    /// // A bit this version does not know survives a round trip.
    /// let from_newer_peer = AgentCapabilities::from_bits_retain(0x1_0001);
    /// assert_eq!(from_newer_peer.bits(), 0x1_0001);
    /// assert_eq!(from_newer_peer.iter_names().count(), 1);
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
    pub struct AgentCapabilities: u64 {
        /// Reports status; every agent sets it.
        const REPORTS_STATUS = 0x1;
        /// Accepts remote configuration.
        const ACCEPTS_REMOTE_CONFIG = 0x2;
        /// Reports its effective configuration.
        const REPORTS_EFFECTIVE_CONFIG = 0x4;
        /// Accepts package offers. [Beta]
        const ACCEPTS_PACKAGES = 0x8;
        /// Reports package statuses. [Beta]
        const REPORTS_PACKAGE_STATUSES = 0x10;
        /// Can send its own traces where the server says. [Beta]
        const REPORTS_OWN_TRACES = 0x20;
        /// Can send its own metrics where the server says. [Beta]
        const REPORTS_OWN_METRICS = 0x40;
        /// Can send its own logs where the server says. [Beta]
        const REPORTS_OWN_LOGS = 0x80;
        /// Accepts new OpAMP connection settings. [Beta]
        const ACCEPTS_OPAMP_CONNECTION_SETTINGS = 0x100;
        /// Accepts settings for other connections. [Beta]
        const ACCEPTS_OTHER_CONNECTION_SETTINGS = 0x200;
        /// Accepts the restart command. [Beta]
        const ACCEPTS_RESTART_COMMAND = 0x400;
        /// Reports health.
        const REPORTS_HEALTH = 0x800;
        /// Reports remote configuration status.
        const REPORTS_REMOTE_CONFIG = 0x1000;
        /// Sends heartbeats. [Development]
        const REPORTS_HEARTBEAT = 0x2000;
        /// Reports available components. [Development]
        const REPORTS_AVAILABLE_COMPONENTS = 0x4000;
        /// Reports connection settings status. [Development]
        const REPORTS_CONNECTION_SETTINGS_STATUS = 0x8000;
        // Keep every other bit: a newer peer may send capabilities we don't name.
        const _ = !0;
    }
}

bitflags! {
    /// `ServerToAgent.capabilities`: what the server can do.
    ///
    /// ```
    /// use opamp_proto::ServerCapabilities;
    ///
    /// let caps = ServerCapabilities::ACCEPTS_STATUS | ServerCapabilities::OFFERS_REMOTE_CONFIG;
    /// assert_eq!(caps.bits(), 0x3);
    /// let names: Vec<_> = caps.iter_names().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["ACCEPTS_STATUS", "OFFERS_REMOTE_CONFIG"]);
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
    pub struct ServerCapabilities: u64 {
        /// Accepts agent status reports.
        const ACCEPTS_STATUS = 0x1;
        /// Offers remote configuration.
        const OFFERS_REMOTE_CONFIG = 0x2;
        /// Accepts effective configuration reports.
        const ACCEPTS_EFFECTIVE_CONFIG = 0x4;
        /// Offers packages. [Beta]
        const OFFERS_PACKAGES = 0x8;
        /// Accepts package statuses. [Beta]
        const ACCEPTS_PACKAGES_STATUS = 0x10;
        /// Offers connection settings. [Beta]
        const OFFERS_CONNECTION_SETTINGS = 0x20;
        /// Accepts connection settings requests (CSR flow). [Development]
        const ACCEPTS_CONNECTION_SETTINGS_REQUEST = 0x40;
        // Unknown bits are retained.
        const _ = !0;
    }
}

bitflags! {
    /// `AgentToServer.flags`.
    ///
    /// ```
    /// use opamp_proto::AgentToServerFlags;
    ///
    /// let flags = AgentToServerFlags::from_bits_retain(1);
    /// assert!(flags.contains(AgentToServerFlags::REQUEST_INSTANCE_UID));
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
    pub struct AgentToServerFlags: u64 {
        /// Asks the server for a new instance uid.
        const REQUEST_INSTANCE_UID = 0x1;
        // Unknown bits are retained.
        const _ = !0;
    }
}

bitflags! {
    /// `ServerToAgent.flags`.
    ///
    /// ```
    /// use opamp_proto::ServerToAgentFlags;
    ///
    /// let flags = ServerToAgentFlags::REPORT_FULL_STATE | ServerToAgentFlags::REPORT_AVAILABLE_COMPONENTS;
    /// assert_eq!(flags.bits(), 3);
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
    pub struct ServerToAgentFlags: u64 {
        /// The agent should report all of its state next time.
        const REPORT_FULL_STATE = 0x1;
        /// The agent should send its full list of available components. [Development]
        const REPORT_AVAILABLE_COMPONENTS = 0x2;
        // Unknown bits are retained.
        const _ = !0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generated;

    /// The named bits agree with the generated enums (and so with the .proto).
    #[test]
    fn named_bits_match_the_proto_enums() {
        use generated::AgentCapabilities as A;
        let pairs = [
            (AgentCapabilities::REPORTS_STATUS, A::ReportsStatus),
            (
                AgentCapabilities::ACCEPTS_REMOTE_CONFIG,
                A::AcceptsRemoteConfig,
            ),
            (
                AgentCapabilities::REPORTS_EFFECTIVE_CONFIG,
                A::ReportsEffectiveConfig,
            ),
            (AgentCapabilities::ACCEPTS_PACKAGES, A::AcceptsPackages),
            (
                AgentCapabilities::REPORTS_PACKAGE_STATUSES,
                A::ReportsPackageStatuses,
            ),
            (AgentCapabilities::REPORTS_OWN_TRACES, A::ReportsOwnTraces),
            (AgentCapabilities::REPORTS_OWN_METRICS, A::ReportsOwnMetrics),
            (AgentCapabilities::REPORTS_OWN_LOGS, A::ReportsOwnLogs),
            (
                AgentCapabilities::ACCEPTS_OPAMP_CONNECTION_SETTINGS,
                A::AcceptsOpAmpConnectionSettings,
            ),
            (
                AgentCapabilities::ACCEPTS_OTHER_CONNECTION_SETTINGS,
                A::AcceptsOtherConnectionSettings,
            ),
            (
                AgentCapabilities::ACCEPTS_RESTART_COMMAND,
                A::AcceptsRestartCommand,
            ),
            (AgentCapabilities::REPORTS_HEALTH, A::ReportsHealth),
            (
                AgentCapabilities::REPORTS_REMOTE_CONFIG,
                A::ReportsRemoteConfig,
            ),
            (AgentCapabilities::REPORTS_HEARTBEAT, A::ReportsHeartbeat),
            (
                AgentCapabilities::REPORTS_AVAILABLE_COMPONENTS,
                A::ReportsAvailableComponents,
            ),
            (
                AgentCapabilities::REPORTS_CONNECTION_SETTINGS_STATUS,
                A::ReportsConnectionSettingsStatus,
            ),
        ];
        for (typed, raw) in pairs {
            assert_eq!(typed.bits(), raw as i32 as u64, "{raw:?}");
        }
        assert_eq!(AgentCapabilities::all().iter_names().count(), pairs.len());

        use generated::ServerCapabilities as S;
        let pairs = [
            (ServerCapabilities::ACCEPTS_STATUS, S::AcceptsStatus),
            (
                ServerCapabilities::OFFERS_REMOTE_CONFIG,
                S::OffersRemoteConfig,
            ),
            (
                ServerCapabilities::ACCEPTS_EFFECTIVE_CONFIG,
                S::AcceptsEffectiveConfig,
            ),
            (ServerCapabilities::OFFERS_PACKAGES, S::OffersPackages),
            (
                ServerCapabilities::ACCEPTS_PACKAGES_STATUS,
                S::AcceptsPackagesStatus,
            ),
            (
                ServerCapabilities::OFFERS_CONNECTION_SETTINGS,
                S::OffersConnectionSettings,
            ),
            (
                ServerCapabilities::ACCEPTS_CONNECTION_SETTINGS_REQUEST,
                S::AcceptsConnectionSettingsRequest,
            ),
        ];
        for (typed, raw) in pairs {
            assert_eq!(typed.bits(), raw as i32 as u64, "{raw:?}");
        }
        assert_eq!(
            AgentToServerFlags::REQUEST_INSTANCE_UID.bits(),
            generated::AgentToServerFlags::RequestInstanceUid as i32 as u64
        );
        assert_eq!(
            ServerToAgentFlags::REPORT_FULL_STATE.bits(),
            generated::ServerToAgentFlags::ReportFullState as i32 as u64
        );
        assert_eq!(
            ServerToAgentFlags::REPORT_AVAILABLE_COMPONENTS.bits(),
            generated::ServerToAgentFlags::ReportAvailableComponents as i32 as u64
        );
    }

    #[test]
    fn int_03_unknown_bits_are_preserved_and_debug_shows_them() {
        let caps = AgentCapabilities::from_bits_retain(0x8000_0000_0000_0001);
        assert_eq!(caps.bits(), 0x8000_0000_0000_0001);
        let shown = format!("{caps:?}");
        assert!(shown.contains("REPORTS_STATUS"), "{shown}");
        assert!(shown.contains("0x8000000000000000"), "{shown}");
        let union = caps | AgentCapabilities::REPORTS_HEALTH;
        assert_eq!(union.bits(), 0x8000_0000_0000_0801);
    }
}
