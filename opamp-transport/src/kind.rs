//! The one name for the two OpAMP transports, used across the workspace.

/// The transport an agent connection uses (the spec's two transports).
///
/// Deliberately exhaustive: OpAMP defines exactly these two, and code on
/// both sides should be told by the compiler when a third ever appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// A WebSocket (`ws://`, `wss://`): full duplex, the server can push at
    /// any time.
    WebSocket,
    /// Plain HTTP polling (`http://`, `https://`): one `POST` per message;
    /// the server answers each and pushes wait for the next poll (HTTP-15).
    PlainHttp,
}
