//! Pushing one config to every agent through the server side.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use url::Url;

use super::agent::agent_uid;
use super::server::ServerProcess;
use super::stats::Stats;

/// The config file name and content type every push uses.
pub(crate) const CONFIG_NAME: &str = "config.yaml";
const CONTENT_TYPE: &str = "text/yaml";

/// A config body of `size` bytes (at least the header line) that differs
/// in every run, so its hash is new to the agents.
pub(crate) fn config_body(size: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let mut body = format!("# loadgen push {nanos}\nprocessors:\n  batch: {{}}\n");
    let filler = "  # padding padding padding padding padding padding padding\n";
    while body.len() + filler.len() <= size {
        body.push_str(filler);
    }
    while body.len() < size {
        body.push('#');
    }
    body
}

/// `{"cmd":"offer_remote_config","to":"all",...}` for the interop servers.
pub(crate) fn stdin_offer(body: &str) -> serde_json::Value {
    serde_json::json!({
        "cmd": "offer_remote_config",
        "to": "all",
        "name": CONFIG_NAME,
        "content_type": CONTENT_TYPE,
        "body": body,
    })
}

/// Writes the offer to the started server's stdin. Every agent's push
/// starts now.
pub(crate) async fn push_stdin(
    server: &mut ServerProcess,
    stats: &Stats,
    agents: usize,
    body: &str,
) -> Result<(), String> {
    let now = std::time::Instant::now();
    for agent in 0..agents {
        stats.mark_push_started(agent, now);
    }
    server
        .command(stdin_offer(body), Duration::from_secs(60))
        .await
        .map(drop)
}

/// `PUT <base>/api/config/default?file=config.yaml`: one request for the
/// whole fleet.
pub(crate) async fn push_api_default(
    base: &Url,
    stats: &Stats,
    agents: usize,
    body: &str,
) -> Result<(), String> {
    let url = join(base, &format!("api/config/default?file={CONFIG_NAME}"))?;
    let now = std::time::Instant::now();
    for agent in 0..agents {
        stats.mark_push_started(agent, now);
    }
    let mut client = ApiClient::connect(&url).await?;
    let status = client.put(&url, Bytes::from(body.to_owned())).await?;
    if !status.is_success() {
        return Err(format!("PUT {url}: {status}"));
    }
    Ok(())
}

/// `PUT <base>/api/agents/{uid}/config?file=config.yaml` for every agent,
/// `concurrency` at a time; each agent's push starts when its request is
/// sent. Returns how many requests failed.
pub(crate) async fn push_api_per_agent(
    base: &Url,
    stats: Arc<Stats>,
    agents: usize,
    run_millis: u64,
    body: &str,
    concurrency: usize,
) -> Result<usize, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let body = Bytes::from(body.to_owned());
    let probe = join(base, "api/agents")?;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (base, stats, next, failed, body, probe) = (
            base.clone(),
            Arc::clone(&stats),
            Arc::clone(&next),
            Arc::clone(&failed),
            body.clone(),
            probe.clone(),
        );
        workers.spawn(async move {
            let mut client = ApiClient::connect(&probe).await?;
            loop {
                let agent = next.fetch_add(1, Ordering::Relaxed);
                if agent >= agents {
                    return Ok::<(), String>(());
                }
                let uid = agent_uid(run_millis, agent);
                let url = join(
                    &base,
                    &format!("api/agents/{uid}/config?file={CONFIG_NAME}"),
                )?;
                stats.mark_push_started(agent, std::time::Instant::now());
                match client.put(&url, body.clone()).await {
                    Ok(status) if status.is_success() => {}
                    Ok(_) => {
                        stats.error("push_rejected");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        stats.error("push_request_failed");
                        failed.fetch_add(1, Ordering::Relaxed);
                        client = ApiClient::connect(&probe).await?;
                    }
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|error| error.to_string())??;
    }
    Ok(failed.load(Ordering::Relaxed))
}

fn join(base: &Url, path: &str) -> Result<Url, String> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.join(path)
        .map_err(|error| format!("{base}{path}: {error}"))
}

/// One keep-alive HTTP/1.1 connection to the server's API.
struct ApiClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl ApiClient {
    async fn connect(url: &Url) -> Result<Self, String> {
        let host = url.host_str().ok_or("API url has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|error| format!("connecting to {host}:{port}: {error}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| error.to_string())?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    async fn put(&mut self, url: &Url, body: Bytes) -> Result<StatusCode, String> {
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let request = Request::builder()
            .method(Method::PUT)
            .uri(target)
            .header(http::header::HOST, url.authority())
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(body))
            .map_err(|error| error.to_string())?;
        self.sender
            .ready()
            .await
            .map_err(|error| error.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        // Drain the body so the connection can be reused.
        response
            .into_body()
            .collect()
            .await
            .map_err(|error| error.to_string())?;
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bodies_have_the_asked_size() {
        let a = config_body(1024);
        assert_eq!(a.len(), 1024);
        assert!(a.starts_with("# loadgen push "));
        assert!(a.ends_with('\n') || a.ends_with('#'));
        assert!(config_body(10).len() >= 10);
    }

    #[test]
    fn api_urls_join_under_the_base_path() {
        let base = Url::parse("http://127.0.0.1:4321").unwrap();
        assert_eq!(
            join(&base, "api/config/default?file=config.yaml")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:4321/api/config/default?file=config.yaml"
        );
        let nested = Url::parse("http://h/fleet").unwrap();
        assert_eq!(
            join(&nested, "api/agents").unwrap().as_str(),
            "http://h/fleet/api/agents"
        );
    }

    #[test]
    fn stdin_offer_matches_the_interop_protocol() {
        let offer = stdin_offer("a: 1\n");
        assert_eq!(offer["cmd"], "offer_remote_config");
        assert_eq!(offer["to"], "all");
        assert_eq!(offer["name"], CONFIG_NAME);
        assert_eq!(offer["body"], "a: 1\n");
    }
}
