//! OpAMP's plain-HTTP transport: one `POST` per `AgentToServer`, answered by
//! one `ServerToAgent` (HTTP-01, HTTP-09).
//!
//! [`client`] (feature `client`) is the agent side, [`server`] (feature
//! `server`) the helpers a server plugs into its hyper / tower / axum stack.
//! What both sides agree on lives here.

use ::http::HeaderName;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
pub mod server;

pub use crate::gzip::encode_gzip_body;

/// The media type of every OpAMP plain-HTTP body (HTTP-03).
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

/// The request header carrying the agent's instance uid in canonical UUID
/// form, for load balancers that route on it (HTTP-08).
pub const OPAMP_INSTANCE_UID: HeaderName = HeaderName::from_static("opamp-instance-uid");
