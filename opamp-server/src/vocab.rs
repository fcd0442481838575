//! Words the whole server uses: transports and why connections end.

pub use opamp_transport::TransportKind;

/// Why a connection (or plain-HTTP session) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The agent said goodbye with `agent_disconnect` (MSG-07).
    AgentDisconnect,
    /// The agent closed the WebSocket (Close frame or end of stream).
    ClosedByAgent {
        /// The close code, if the agent sent a Close frame.
        code: Option<u16>,
    },
    /// [`Connection::disconnect`](crate::Connection::disconnect) was called.
    Requested,
    /// The same agent connected again (its `sequence_num` continued on the
    /// new connection), so this older connection was closed.
    Replaced,
    /// The agent's instance uid is in use on another live connection and the
    /// policy is to refuse (UID-10).
    DuplicateRefused,
    /// No message arrived on the WebSocket within the idle timeout.
    IdleTimeout,
    /// Nothing at all, not even a Pong, arrived on the WebSocket within the
    /// keepalive timeout: the link is dead.
    Unresponsive,
    /// The plain-HTTP agent stopped polling for longer than the stale timeout.
    Stale,
    /// The agent did not read what it was sent and its send queue filled up.
    SendQueueFull,
    /// The agent sent a message over the size limit (WS-09, close 1009).
    MessageTooLarge,
    /// The agent broke the WebSocket protocol (text frame, bad framing).
    ProtocolError(String),
    /// The connection failed (I/O error, reset).
    Transport(String),
    /// The server is shutting down (close 1001).
    Shutdown,
    /// The agent connected anew too often and was told to wait (close 1013,
    /// see [`ReconnectGuard`](crate::ReconnectGuard)).
    Throttled,
}
