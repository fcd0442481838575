//! The agent-side WebSocket connector.

use http::{HeaderValue, StatusCode, header};
use opamp_proto::{AgentToServer, ServerToAgent};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
use url::Url;

use super::conn::{BoxedIo, ConnSettings, DEFAULT_CLOSE_TIMEOUT, OnDemandRead, WsConnection};
use crate::HeaderlessFrames;
use crate::connect::{ConnectError, basic_auth_from_userinfo, open_stream, scheme_uses_tls};
use crate::options::{ClientOptions, redacted_url};

/// An agent's OpAMP WebSocket connection: sends `AgentToServer`, receives
/// `ServerToAgent`.
///
/// ```no_run
/// use opamp_transport::ClientOptions;
/// use opamp_transport::ws::client::WsClientConnection;
/// use opamp_proto::AgentToServer;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let options = ClientOptions::new("ws://127.0.0.1:4320/v1/opamp".parse()?);
/// let mut connection = WsClientConnection::connect(&options).await?;
/// connection.send(&AgentToServer::default()).await?;
/// if let Some(reply) = connection.recv().await? {
///     println!("server says {reply:?}");
/// }
/// connection.close().await?;
/// # Ok(()) }
/// ```
pub type WsClientConnection = WsConnection<AgentToServer, ServerToAgent>;

/// Headers the WebSocket handshake owns; user headers cannot replace them.
const HANDSHAKE_HEADERS: [header::HeaderName; 4] = [
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::CONNECTION,
    header::UPGRADE,
];

impl WsConnection<AgentToServer, ServerToAgent> {
    /// Connects to `options.endpoint` and performs the WebSocket upgrade.
    ///
    /// `ws://`/`wss://` are used as is; `http://`/`https://` are mapped to
    /// them. Each attempt (per redirect hop) is bounded by
    /// `options.connect_timeout` and sends `options.headers` plus whatever
    /// `options.header_hook` adds (the hook runs once per hop). User info in
    /// the endpoint URL becomes `Authorization: Basic` unless an
    /// `Authorization` header is set.
    ///
    /// Outcomes besides success: 3xx redirects are followed up to
    /// `options.max_redirects` (a loop or one hop too many gives
    /// [`ConnectError::TooManyRedirects`]; TLS to plaintext gives
    /// [`ConnectError::InsecureRedirect`]); 401 gives
    /// [`ConnectError::Unauthorized`]; any other status gives
    /// [`ConnectError::Refused`] with `Retry-After` parsed (429/503, WS-24).
    pub async fn connect(options: &ClientOptions) -> Result<Self, ConnectError> {
        let settings = ConnSettings {
            max_message_size: options.max_message_size,
            headerless: if options.accept_headerless_frames {
                HeaderlessFrames::Accept
            } else {
                HeaderlessFrames::Reject
            },
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        };
        let mut url = websocket_url(&options.endpoint)?;
        let mut visited = vec![url.clone()];
        loop {
            let attempt = handshake(&url, options, &settings);
            let outcome = match tokio::time::timeout(options.connect_timeout, attempt).await {
                Ok(outcome) => outcome?,
                Err(_) => return Err(ConnectError::Timeout(options.connect_timeout)),
            };
            let response = match outcome {
                Handshake::Done(connection) => return Ok(connection),
                Handshake::Status(response) => response,
            };
            let status = response.status();
            if !is_followed_redirect(status) {
                tracing::debug!(url = %redacted_url(&url), %status, "WebSocket upgrade refused");
                return Err(ConnectError::from_refusal(
                    status,
                    response.headers().clone(),
                ));
            }
            let next = redirect_target(&url, response.headers().get(header::LOCATION))?;
            let hops = visited.len();
            if hops > options.max_redirects || visited.contains(&next) {
                return Err(ConnectError::TooManyRedirects {
                    limit: options.max_redirects,
                });
            }
            tracing::debug!(from = %redacted_url(&url), to = %redacted_url(&next), %status, "following redirect");
            visited.push(next.clone());
            url = next;
        }
    }
}

enum Handshake {
    Done(WsClientConnection),
    Status(tungstenite::handshake::client::Response),
}

/// One connect + upgrade attempt against `url`.
async fn handshake(
    url: &Url,
    options: &ClientOptions,
    settings: &ConnSettings,
) -> Result<Handshake, ConnectError> {
    let stream = open_stream(url, options).await?;
    let request = upgrade_request(url, options)?;
    let io: BoxedIo = Box::new(OnDemandRead::new(stream));
    match tokio_tungstenite::client_async_with_config(
        request,
        io,
        Some(settings.websocket_config()),
    )
    .await
    {
        Ok((ws, _response)) => {
            tracing::debug!(url = %redacted_url(url), "WebSocket connected");
            Ok(Handshake::Done(WsConnection::new(ws, *settings)))
        }
        Err(tungstenite::Error::Http(response)) => Ok(Handshake::Status(*response)),
        Err(tungstenite::Error::Io(e)) => Err(ConnectError::from_io(e)),
        Err(other) => Err(ConnectError::Handshake(Box::new(other))),
    }
}

fn upgrade_request(
    url: &Url,
    options: &ClientOptions,
) -> Result<tungstenite::handshake::client::Request, ConnectError> {
    let mut bare = url.clone();
    // Credentials travel in a header, never in the request target.
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    bare.set_fragment(None);
    let mut request = bare
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::InvalidUrl(format!("{}: {e}", redacted_url(url))))?;
    let mut headers = options.request_headers();
    if !headers.contains_key(header::AUTHORIZATION) {
        if let Some(value) = basic_auth_from_userinfo(url) {
            headers.insert(header::AUTHORIZATION, value);
        }
    }
    for name in &HANDSHAKE_HEADERS {
        headers.remove(name);
    }
    let target = request.headers_mut();
    let mut previous = None;
    for (name, value) in headers {
        // `HeaderMap::into_iter` yields the name only for the first value.
        let name = match name {
            Some(name) => {
                target.remove(&name);
                previous = Some(name.clone());
                name
            }
            None => match &previous {
                Some(name) => name.clone(),
                None => continue,
            },
        };
        target.append(name, value);
    }
    Ok(request)
}

/// Maps the endpoint to a WebSocket URL.
fn websocket_url(endpoint: &Url) -> Result<Url, ConnectError> {
    let mut url = endpoint.clone();
    let scheme = match endpoint.scheme() {
        "ws" | "wss" => return Ok(url),
        "http" => "ws",
        "https" => "wss",
        other => return Err(ConnectError::UnsupportedScheme(other.to_owned())),
    };
    url.set_scheme(scheme).map_err(|()| {
        ConnectError::InvalidUrl(format!(
            "cannot use {} as a WebSocket URL",
            redacted_url(endpoint)
        ))
    })?;
    Ok(url)
}

fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Resolves `Location` against the current URL and maps it to ws/wss.
fn redirect_target(current: &Url, location: Option<&HeaderValue>) -> Result<Url, ConnectError> {
    let location = location
        .ok_or_else(|| ConnectError::InvalidRedirect("redirect without a Location header".into()))?
        .to_str()
        .map_err(|_| ConnectError::InvalidRedirect("Location is not ASCII".into()))?;
    let joined = current
        .join(location)
        .map_err(|e| ConnectError::InvalidRedirect(format!("bad Location {location:?}: {e}")))?;
    let next = websocket_url(&joined).map_err(|_| {
        ConnectError::InvalidRedirect(format!(
            "Location {} has an unsupported scheme",
            redacted_url(&joined)
        ))
    })?;
    let was_tls = scheme_uses_tls(current.scheme()).unwrap_or(false);
    let is_tls = scheme_uses_tls(next.scheme()).unwrap_or(false);
    if was_tls && !is_tls {
        return Err(ConnectError::InsecureRedirect(redacted_url(&next)));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_schemes_map_to_websocket() {
        let map = |s: &str| websocket_url(&Url::parse(s).unwrap()).map(|u| u.to_string());
        assert_eq!(map("http://h:1/p?q=1").unwrap(), "ws://h:1/p?q=1");
        assert_eq!(map("https://h/p").unwrap(), "wss://h/p");
        assert_eq!(map("wss://h/p").unwrap(), "wss://h/p");
        assert!(matches!(
            map("ftp://h/p"),
            Err(ConnectError::UnsupportedScheme(_))
        ));
    }

    #[test]
    fn redirect_resolution() {
        let current = Url::parse("wss://a.example/v1/opamp").unwrap();
        let loc = |s: &'static str| Some(HeaderValue::from_static(s));
        assert_eq!(
            redirect_target(&current, loc("/v2").as_ref())
                .unwrap()
                .as_str(),
            "wss://a.example/v2"
        );
        assert_eq!(
            redirect_target(&current, loc("https://b.example/x").as_ref())
                .unwrap()
                .as_str(),
            "wss://b.example/x"
        );
        assert!(matches!(
            redirect_target(&current, loc("ws://b.example/x").as_ref()),
            Err(ConnectError::InsecureRedirect(_))
        ));
        assert!(matches!(
            redirect_target(&current, loc("http://b.example/").as_ref()),
            Err(ConnectError::InsecureRedirect(_))
        ));
        assert!(matches!(
            redirect_target(&current, None),
            Err(ConnectError::InvalidRedirect(_))
        ));
        assert!(matches!(
            redirect_target(&current, loc("mailto:x@y").as_ref()),
            Err(ConnectError::InvalidRedirect(_))
        ));
        let plain = Url::parse("ws://a.example/").unwrap();
        assert_eq!(
            redirect_target(&plain, loc("wss://b.example/").as_ref())
                .unwrap()
                .scheme(),
            "wss"
        );
    }

    #[test]
    fn upgrade_request_carries_user_headers_but_not_over_handshake_ones() {
        let options = ClientOptions::new(Url::parse("ws://user:pw@h:9/p").unwrap())
            .with_header(
                header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_static("forged"),
            )
            .with_header(
                header::HeaderName::from_static("x-multi"),
                HeaderValue::from_static("a"),
            )
            .with_header(
                header::HeaderName::from_static("x-multi"),
                HeaderValue::from_static("b"),
            );
        let request = upgrade_request(&options.endpoint, &options).unwrap();
        assert_ne!(request.headers()[header::SEC_WEBSOCKET_KEY], "forged");
        let multi: Vec<_> = request.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert!(
            request.headers()[header::AUTHORIZATION]
                .to_str()
                .unwrap()
                .starts_with("Basic ")
        );
        assert_eq!(request.headers()[header::HOST], "h:9");
        assert_eq!(request.uri().to_string(), "ws://h:9/p");

        let with_fragment = Url::parse("ws://h/p?q=1#frag").unwrap();
        let request = upgrade_request(&with_fragment, &options).unwrap();
        assert_eq!(request.uri().to_string(), "ws://h/p?q=1");
    }
}
