//! Starting and stopping an [`OpampClient`]: the package syncer, the
//! callback task and the driver task for the endpoint's transport.

use std::sync::Arc;

use opamp_proto::AgentCapabilities;
use opamp_transport::http::client::HttpPoster;
use tokio::sync::mpsc;

use crate::callbacks;
use crate::client::{OpampClient, StartParts};
use crate::driver::{DriverContext, Outbox};
use crate::error::ClientError;
use crate::packages::PackageSyncer;
use crate::protocol::TransportKind;
use crate::shared::now;
use crate::{http_driver, ws_driver};

/// How many notices may wait for the callback queue before the driver stops
/// reading from the network (heartbeats go on).
const CALLBACK_QUEUE: usize = 64;

impl OpampClient {
    /// Validates the state (description present, capabilities consistent
    /// with what was provided) and starts the client in the current tokio
    /// runtime. The first message carries the full state (STS-01).
    pub async fn start(&self) -> Result<(), ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let parts = self
            .inner
            .start_parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or(ClientError::AlreadyStarted)?;

        let syncer = match self.start_syncer(&parts).await {
            Ok(syncer) => syncer,
            Err(error) => {
                self.restore(parts);
                return Err(error);
            }
        };
        let shared = &self.inner.shared;
        if shared
            .core()
            .capabilities()
            .contains(AgentCapabilities::REPORTS_EFFECTIVE_CONFIG)
        {
            self.update_effective_config();
        }
        if let Err(error) = shared.core().start(now()) {
            self.restore(parts);
            return Err(error);
        }

        let (notice_tx, notice_rx) = mpsc::channel(CALLBACK_QUEUE);
        runtime.spawn(callbacks::run(self.clone(), notice_rx, syncer));
        let context = DriverContext {
            shared: Arc::clone(shared),
            outbox: Outbox::new(notice_tx),
            request_timeout: parts.options.request_timeout,
            shutdown_timeout: self.inner.shutdown_timeout,
            compression: parts.compression,
            allow_insecure_offers: parts.allow_insecure_offers,
        };
        let handle = match self.inner.transport {
            TransportKind::WebSocket => runtime.spawn(ws_driver::run(context, parts.options)),
            TransportKind::PlainHttp => runtime.spawn(http_driver::run(context, parts.options)),
        };
        *self
            .inner
            .driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handle);
        Ok(())
    }

    fn restore(&self, parts: StartParts) {
        *self
            .inner
            .start_parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(parts);
    }

    async fn start_syncer(&self, parts: &StartParts) -> Result<Option<PackageSyncer>, ClientError> {
        let Some(store) = &parts.package_store else {
            return Ok(None);
        };
        // Downloads use the OpAMP connection's TLS and proxy settings; the
        // endpoint only has to be an HTTP URL for the poster to accept it.
        let mut download_options = parts.options.clone();
        let scheme = match download_options.endpoint.scheme() {
            "wss" | "https" => "https",
            _ => "http",
        };
        // Changing between these special schemes always succeeds.
        let _ = download_options.endpoint.set_scheme(scheme);
        download_options.headers.clear();
        download_options.header_hook = None;
        let downloader = HttpPoster::new(download_options)
            .map_err(|error| ClientError::InvalidEndpoint(error.to_string()))?;
        let weak = Arc::downgrade(&self.inner.shared);
        let callbacks = Arc::clone(&self.inner.callbacks);
        let mut builder = PackageSyncer::builder(Arc::clone(store), Arc::new(downloader))
            .on_statuses(move |statuses| {
                if let Some(shared) = weak.upgrade() {
                    shared.update(|core| core.set_package_statuses(statuses));
                }
            })
            .on_event(move |event| callbacks.on_package_event(event));
        if let Some(verifier) = &parts.package_verifier {
            builder = builder.verifier(Arc::clone(verifier));
        }
        builder
            .start()
            .await
            .map(Some)
            .map_err(ClientError::PackageStore)
    }

    /// Stops the client: the last message carries `agent_disconnect`
    /// (MSG-06), then the WebSocket is closed with a Close frame (WS-17) or
    /// the last plain-HTTP request is made (HTTP-24). Waits at most about
    /// twice the shutdown timeout. Stopping twice, or a client never started,
    /// is fine.
    pub async fn stop(&self) {
        self.inner.shared.update(|core| core.stop(now()));
        let handle = self
            .inner
            .driver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(mut handle) = handle {
            let bound = self.inner.shutdown_timeout.saturating_mul(2);
            if tokio::time::timeout(bound, &mut handle).await.is_err() {
                tracing::warn!("OpAMP client did not stop in time; aborting its task");
                handle.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use opamp_proto::{AgentDescription, ComponentHealth, CustomCapabilities, CustomMessage};

    use super::*;

    #[test]
    fn builder_rejects_unusable_endpoints() {
        assert!(matches!(
            OpampClient::builder("not a url").build(),
            Err(ClientError::InvalidEndpoint(_))
        ));
        assert!(matches!(
            OpampClient::builder("ftp://example.com/v1/opamp").build(),
            Err(ClientError::UnsupportedScheme(_))
        ));
        let ws = OpampClient::builder("wss://example.com/v1/opamp")
            .build()
            .unwrap();
        assert_eq!(ws.transport(), TransportKind::WebSocket);
        let http = OpampClient::builder("https://example.com/v1/opamp")
            .build()
            .unwrap();
        assert_eq!(http.transport(), TransportKind::PlainHttp);
    }

    /// An endpoint on a loopback port nobody listens on.
    fn dead_endpoint() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1/opamp", listener.local_addr().unwrap())
    }

    /// A client for [`dead_endpoint`] with `capabilities`.
    fn dead_client(capabilities: AgentCapabilities) -> OpampClient {
        OpampClient::builder(dead_endpoint())
            .capabilities(capabilities)
            .build()
            .unwrap()
    }

    /// Why starting `client` fails.
    async fn start_error(client: &OpampClient) -> ClientError {
        client.start().await.expect_err("start fails")
    }

    fn description() -> AgentDescription {
        AgentDescription::for_service("io.example.agent", "1")
    }

    #[tokio::test]
    async fn failed_start_validation_can_be_fixed_and_retried() {
        let client = dead_client(AgentCapabilities::REPORTS_HEALTH);
        let error = start_error(&client).await;
        assert!(matches!(error, ClientError::MissingAgentDescription));
        client.set_agent_description(description());
        let error = start_error(&client).await;
        assert!(matches!(error, ClientError::MissingHealth));
        client.set_health(ComponentHealth {
            healthy: true,
            ..Default::default()
        });
        client.start().await.unwrap();
        let error = start_error(&client).await;
        assert!(matches!(error, ClientError::AlreadyStarted));
        client.stop().await;
        assert!(client.is_stopped());
    }

    #[tokio::test]
    async fn accepts_packages_needs_a_package_store() {
        let client = dead_client(AgentCapabilities::ACCEPTS_PACKAGES);
        client.set_agent_description(description());
        let error = start_error(&client).await;
        assert!(matches!(error, ClientError::PackagesMismatch));
    }

    #[tokio::test]
    async fn custom_message_rules_apply_through_the_handle() {
        let client = OpampClient::builder(dead_endpoint()).build().unwrap();
        client.set_custom_capabilities(CustomCapabilities {
            capabilities: vec!["io.example.cap".into()],
        });
        let message = CustomMessage {
            capability: "io.example.cap".into(),
            ..Default::default()
        };
        client.send_custom_message(message.clone()).unwrap();
        assert!(matches!(
            client.send_custom_message(message),
            Err(ClientError::CustomMessagePending)
        ));
    }
}
