//! A minimal OTLP/HTTP receiver for own-telemetry offers: accepts every
//! POST with 200 and an empty protobuf body, and records what arrived.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use opamp_testkit::Inbox;

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct OtlpRequest {
    /// Request path (`/v1/logs`, `/v1/metrics`, `/v1/traces`).
    pub path: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body as sent (possibly compressed, see `content-encoding`).
    pub body: Vec<u8>,
}

impl OtlpRequest {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The receiver: listening on 127.0.0.1, port 0.
#[derive(Debug)]
pub struct OtlpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every request, in arrival order.
    pub requests: Inbox<OtlpRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpSink {
    /// Starts the receiver. Must be called inside a tokio runtime.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (tx, requests) = Inbox::new("OTLP sink");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, tx.clone()));
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:port` (the base URL the fleet server offers with
    /// `/v1/metrics`, `/v1/traces`, `/v1/logs` appended).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one keep-alive connection: requests with a Content-Length body.
async fn serve(stream: tokio::net::TcpStream, tx: mpsc::UnboundedSender<OtlpRequest>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let length = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let _ = tx.send(OtlpRequest {
            path,
            headers,
            body,
        });
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}
