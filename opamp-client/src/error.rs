//! The error type of the public API.

/// Why a client call was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `start` was called twice.
    #[error("the client was already started")]
    AlreadyStarted,
    /// The client has stopped; the call has no effect any more.
    #[error("the client is stopped")]
    Stopped,
    /// No agent description was set before `start`.
    #[error("an agent description must be set before start")]
    MissingAgentDescription,
    /// The instance uid is all zeros.
    #[error("the instance uid must not be all zeros")]
    NilInstanceUid,
    /// `ReportsHealth` is set but no health was provided.
    #[error("ReportsHealth is set but no health was provided")]
    MissingHealth,
    /// `ReportsAvailableComponents` is set but no components were provided.
    #[error("ReportsAvailableComponents is set but no available components were provided")]
    MissingAvailableComponents,
    /// `AcceptsPackages` and the package store disagree, or
    /// `ReportsPackageStatuses` is set with neither packages support nor
    /// statuses.
    #[error(
        "package capabilities do not match the configuration: AcceptsPackages needs a package store (and the reverse), ReportsPackageStatuses needs AcceptsPackages or initial package statuses"
    )]
    PackagesMismatch,
    /// The endpoint URL is not usable.
    #[error("invalid endpoint URL: {0}")]
    InvalidEndpoint(String),
    /// The endpoint scheme is not `ws`, `wss`, `http` or `https`.
    #[error("unsupported endpoint scheme {0:?}: use ws, wss, http or https")]
    UnsupportedScheme(String),
    /// A connection settings request without a certificate request (CS-35).
    #[error("a connection settings request needs opamp.certificate_request")]
    EmptyConnectionSettingsRequest,
    /// The server said it does not support this (CAP-10).
    #[error("the server does not support {0}")]
    ServerLacksCapability(&'static str),
    /// A custom message for a capability not in the agent's custom
    /// capabilities.
    #[error("custom capability {0:?} is not declared by the agent")]
    CustomCapabilityNotDeclared(String),
    /// A custom message is already waiting to be sent.
    #[error("a custom message is already pending")]
    CustomMessagePending,
    /// The package store could not be read at start.
    #[error("package store: {0}")]
    PackageStore(#[source] crate::packages::PackageStoreError),
    /// `start` must be called inside a tokio runtime.
    #[error("start must be called within a tokio runtime")]
    NoRuntime,
}
