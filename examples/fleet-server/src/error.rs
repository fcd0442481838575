//! API errors: each becomes a status code and a JSON body
//! `{"error": "<code>", "message": "<text>"}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opamp_proto::{AgentCapabilities, InstanceUid};

use super::store::FleetStoreError;
use super::view::capability_names;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("unknown agent {0}")]
    UnknownAgent(InstanceUid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("cursor {0:?} is not one this server handed out; start again without a cursor")]
    BadCursor(String),
    #[error("the agent does not declare the {} capability", capability_names(*.0).join(", "))]
    NotAccepted(AgentCapabilities),
    #[error("the agent has not announced the custom capability {0:?}")]
    CustomCapabilityNotAnnounced(String),
    #[error("agent {0} is not connected")]
    NotConnected(InstanceUid),
    #[error("agent {0} is connected; only disconnected agents can be forgotten")]
    Connected(InstanceUid),
    #[error("the server has no client CA key (--client-ca-key) to issue certificates with")]
    NoClientCa,
    #[error("cannot deliver to the agent: {0}")]
    Delivery(String),
    #[error("storage failed: {0}")]
    Store(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::UnknownAgent(_) => (StatusCode::NOT_FOUND, "unknown_agent"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::BadCursor(_) => (StatusCode::BAD_REQUEST, "bad_cursor"),
            Self::NotAccepted(_) => (StatusCode::CONFLICT, "capability_not_declared"),
            Self::CustomCapabilityNotAnnounced(_) => {
                (StatusCode::CONFLICT, "custom_capability_not_announced")
            }
            Self::NotConnected(_) => (StatusCode::CONFLICT, "not_connected"),
            Self::Connected(_) => (StatusCode::CONFLICT, "connected"),
            Self::NoClientCa => (StatusCode::CONFLICT, "no_client_ca"),
            Self::Delivery(_) => (StatusCode::BAD_GATEWAY, "delivery_failed"),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_failed"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "API request failed");
        }
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        (status, Json(body)).into_response()
    }
}

impl From<FleetStoreError> for ApiError {
    fn from(error: FleetStoreError) -> Self {
        Self::Store(error.to_string())
    }
}

impl From<opamp_server::StoreError> for ApiError {
    fn from(error: opamp_server::StoreError) -> Self {
        Self::Store(error.to_string())
    }
}
