//! What the WebSocket and plain-HTTP drivers share: the hand-off to the
//! callback queue and applying offered OpAMP connection settings.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use opamp_proto::OpAmpConnectionSettings;
use opamp_transport::{ClientOptions, ClientTlsConfig, ProxyConfig, SystemRoots, TlsVersion};
use tokio::sync::mpsc;
use url::Url;

use crate::callbacks::TransportError;
use crate::client::Inner;
use crate::protocol::Event;
use crate::settings::transport_for;

/// The current time on tokio's clock (so paused-time tests work), as the
/// `std` instant the core takes.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Something for the callback queue.
pub(crate) enum Notice {
    Core(Event),
    Connected,
    ConnectFailed(Box<TransportError>),
    SwitchOutcome {
        hash: Bytes,
        settings: Box<OpAmpConnectionSettings>,
        result: Result<(), String>,
    },
}

/// OpAMP settings the agent accepted, to be verified by connecting (CS-05).
pub(crate) struct SwitchRequest {
    pub(crate) hash: Bytes,
    pub(crate) settings: Box<OpAmpConnectionSettings>,
}

/// Most notices held back while the callback queue is full; past this the
/// driver stops reading from the server until callbacks catch up.
const MAX_BACKLOG: usize = 64;

/// The driver's side of the callback queue. Never blocks the driver: when
/// the queue is full, notices wait here and reading pauses.
pub(crate) struct Outbox {
    tx: mpsc::Sender<Notice>,
    backlog: VecDeque<Notice>,
}

impl Outbox {
    pub(crate) fn new(tx: mpsc::Sender<Notice>) -> Self {
        Self {
            tx,
            backlog: VecDeque::new(),
        }
    }

    pub(crate) fn push(&mut self, notice: Notice) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(notice);
            return;
        }
        match self.tx.try_send(notice) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(notice)) => self.backlog.push_back(notice),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Whether reading from the server should pause.
    pub(crate) fn is_congested(&self) -> bool {
        self.backlog.len() >= MAX_BACKLOG
    }

    /// Moves one held-back notice into the queue once there is room.
    pub(crate) async fn flush_one(&mut self) {
        let Ok(permit) = self.tx.reserve().await else {
            self.backlog.clear();
            return;
        };
        if let Some(notice) = self.backlog.pop_front() {
            permit.send(notice);
        }
    }

    /// Delivers everything held back, waiting at most `bound`.
    pub(crate) async fn drain(&mut self, bound: Duration) {
        let all = async {
            while self.has_backlog() {
                self.flush_one().await;
            }
        };
        let _ = tokio::time::timeout(bound, all).await;
    }
}

/// State both drivers carry.
pub(crate) struct DriverContext {
    pub(crate) inner: Arc<Inner>,
    pub(crate) options: ClientOptions,
    pub(crate) outbox: Outbox,
    pub(crate) switches: mpsc::UnboundedReceiver<SwitchRequest>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) compression: bool,
    pub(crate) allow_insecure_offers: bool,
}

impl DriverContext {
    /// Moves the core's events to the callback queue.
    pub(crate) fn forward_events(&mut self) {
        loop {
            let event = self.inner.core().poll_event();
            match event {
                Some(event) => self.outbox.push(Notice::Core(event)),
                None => break,
            }
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.inner.core().is_stopped()
    }

    /// Runs `work` until it finishes or the client is stopped; `None` means
    /// stopped.
    pub(crate) async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return Some(output),
                _ = self.inner.wake.notified() => {
                    if self.is_stopped() {
                        return None;
                    }
                }
            }
        }
    }

    pub(crate) fn report_switch(&mut self, request: SwitchRequest, result: Result<(), String>) {
        match &result {
            Ok(()) => {
                tracing::info!(endpoint = %crate::driver::endpoint_for_log(&self.options), "switched to new OpAMP connection settings")
            }
            Err(error) => {
                tracing::warn!(%error, "new OpAMP connection settings failed; keeping the previous ones")
            }
        }
        self.outbox.push(Notice::SwitchOutcome {
            hash: request.hash,
            settings: request.settings,
            result,
        });
    }
}

/// The endpoint without credentials, for logs.
pub(crate) fn endpoint_for_log(options: &ClientOptions) -> String {
    let mut url = options.endpoint.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("REDACTED"));
    }
    url.to_string()
}

/// Builds the options for offered OpAMP settings on top of the current
/// ones: unset parts keep the current values (CS-04, AMB-09); a `tls`
/// message replaces the TLS settings (CS-19), a `proxy` message the proxy
/// (CS-21).
pub(crate) fn apply_opamp_settings(
    current: &ClientOptions,
    offer: &OpAmpConnectionSettings,
    allow_insecure: bool,
) -> Result<ClientOptions, String> {
    let mut options = current.clone();
    if !offer.destination_endpoint.is_empty() {
        let endpoint = Url::parse(&offer.destination_endpoint)
            .map_err(|error| format!("invalid destination_endpoint: {error}"))?;
        let new_kind = transport_for(&endpoint).map_err(|error| error.to_string())?;
        let old_kind = transport_for(&current.endpoint).map_err(|error| error.to_string())?;
        if new_kind != old_kind {
            return Err("switching between WebSocket and plain HTTP is not supported".into());
        }
        options.endpoint = endpoint;
    }
    if let Some(headers) = &offer.headers {
        // CS-14: offered headers are sent with every request, replacing
        // configured ones of the same name.
        for header in &headers.headers {
            let name = HeaderName::from_bytes(header.key.as_bytes())
                .map_err(|_| format!("invalid header name {:?}", header.key))?;
            let value = HeaderValue::from_str(&header.value)
                .map_err(|_| format!("invalid value for header {:?}", header.key))?;
            options.headers.insert(name, value);
        }
    }
    if let Some(tls) = &offer.tls {
        if tls.insecure_skip_verify && !allow_insecure {
            return Err("insecure_skip_verify offers are not allowed by local policy".into());
        }
        let mut config = ClientTlsConfig::new().with_insecure_skip_verify(tls.insecure_skip_verify);
        if !tls.ca_pem_contents.is_empty() {
            config = config.with_root_ca_pem(tls.ca_pem_contents.as_bytes().to_vec());
        }
        if tls.include_system_ca_certs_pool {
            config = config.with_system_roots(SystemRoots::Native);
        }
        if !tls.min_version.is_empty() {
            let version = TlsVersion::from_opamp(&tls.min_version)
                .ok_or_else(|| format!("unsupported TLS min_version {:?}", tls.min_version))?;
            config = config.with_min_version(version);
        }
        if !tls.max_version.is_empty() {
            let version = TlsVersion::from_opamp(&tls.max_version)
                .ok_or_else(|| format!("unsupported TLS max_version {:?}", tls.max_version))?;
            config = config.with_max_version(version);
        }
        options.tls = config;
    }
    if let Some(certificate) = &offer.certificate
        && !certificate.cert.is_empty()
    {
        if certificate.private_key.is_empty() {
            return Err(
                "certificate offered without a private key; supply it in on_opamp_connection_settings".into(),
            );
        }
        options.tls = options
            .tls
            .clone()
            .with_client_identity_pem(certificate.cert.to_vec(), certificate.private_key.to_vec());
    }
    if let Some(proxy) = &offer.proxy {
        let url = Url::parse(&proxy.url).map_err(|error| format!("invalid proxy url: {error}"))?;
        let mut config = ProxyConfig::new(url);
        if let Some(headers) = &proxy.connect_headers {
            for header in &headers.headers {
                let name = HeaderName::from_bytes(header.key.as_bytes())
                    .map_err(|_| format!("invalid proxy header name {:?}", header.key))?;
                let value = HeaderValue::from_str(&header.value)
                    .map_err(|_| format!("invalid value for proxy header {:?}", header.key))?;
                config.headers.insert(name, value);
            }
        }
        options.proxy = Some(config);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use opamp_proto::{Header, Headers, TlsCertificate, TlsConnectionSettings};

    use super::*;

    fn current() -> ClientOptions {
        ClientOptions::new(Url::parse("ws://old.example.com/v1/opamp").unwrap())
            .with_header(http::header::USER_AGENT, HeaderValue::from_static("agent"))
    }

    #[test]
    fn cs_04_unset_parts_keep_current_values() {
        let options =
            apply_opamp_settings(&current(), &OpAmpConnectionSettings::default(), false).unwrap();
        assert_eq!(options.endpoint.as_str(), "ws://old.example.com/v1/opamp");
        assert_eq!(options.headers[http::header::USER_AGENT], "agent");
    }

    #[test]
    fn cs_02_cs_14_endpoint_and_headers_are_applied() {
        let offer = OpAmpConnectionSettings {
            destination_endpoint: "wss://new.example.com/v1/opamp".into(),
            headers: Some(Headers {
                headers: vec![Header {
                    key: "Authorization".into(),
                    value: "Bearer t".into(),
                }],
            }),
            ..Default::default()
        };
        let options = apply_opamp_settings(&current(), &offer, false).unwrap();
        assert_eq!(options.endpoint.as_str(), "wss://new.example.com/v1/opamp");
        assert_eq!(options.headers[http::header::AUTHORIZATION], "Bearer t");
        assert_eq!(options.headers[http::header::USER_AGENT], "agent");
    }

    #[test]
    fn bad_offers_are_refused() {
        let cases = [
            OpAmpConnectionSettings {
                destination_endpoint: "not a url".into(),
                ..Default::default()
            },
            OpAmpConnectionSettings {
                destination_endpoint: "http://x/v1/opamp".into(),
                ..Default::default()
            },
            OpAmpConnectionSettings {
                headers: Some(Headers {
                    headers: vec![Header {
                        key: "bad header".into(),
                        value: "v".into(),
                    }],
                }),
                ..Default::default()
            },
            // SEC-13: insecure offers are off by default.
            OpAmpConnectionSettings {
                tls: Some(TlsConnectionSettings {
                    insecure_skip_verify: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
            OpAmpConnectionSettings {
                tls: Some(TlsConnectionSettings {
                    min_version: "1.0".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            // CS-31: a CSR-issued certificate needs the agent's key.
            OpAmpConnectionSettings {
                certificate: Some(TlsCertificate {
                    cert: Bytes::from_static(b"CERT"),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        for offer in cases {
            assert!(
                apply_opamp_settings(&current(), &offer, false).is_err(),
                "{offer:?}"
            );
        }
    }

    #[test]
    fn sec_13_insecure_offer_allowed_when_configured() {
        let offer = OpAmpConnectionSettings {
            tls: Some(TlsConnectionSettings {
                insecure_skip_verify: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = apply_opamp_settings(&current(), &offer, true).unwrap();
        assert!(options.tls.insecure_skip_verify());
    }
}
