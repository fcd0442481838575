//! OpAMP over WebSocket: each message is one binary WebSocket message, a
//! `0x00` header byte followed by the protobuf bytes (WS-01..07).
//!
//! [`client`] (feature `client`) opens a connection from an agent,
//! [`server`] (feature `server`) accepts one inside a hyper / tower / axum
//! stack. Both end up as a [`WsConnection`], defined here with its split
//! halves, errors and close codes.

#[cfg(feature = "client")]
pub mod client;
mod conn;
#[cfg(feature = "server")]
pub mod server;

pub use conn::{
    CLOSE_GOING_AWAY, CLOSE_MESSAGE_TOO_BIG, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA, CloseInfo, DEFAULT_CLOSE_TIMEOUT, ReuniteError, WsActivity,
    WsConnection, WsError, WsReceiver, WsSender,
};
