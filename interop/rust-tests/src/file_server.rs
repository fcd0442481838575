//! A one-file HTTP server on 127.0.0.1 port 0, for packages our server
//! offers to opamp-go agents.

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use opamp_testkit::Inbox;

/// Largest request head read; a package download's is far smaller.
const MAX_HEAD: usize = 16 * 1024;

/// Serves one file's bytes to every `GET` (HTTP/1.1, `Connection: close`)
/// and records each request line.
#[derive(Debug)]
pub struct StaticFile {
    /// Where the file is served.
    pub url: String,
    /// The request line of every request, e.g. `GET /tool.bin HTTP/1.1`.
    pub requests: Inbox<String>,
    task: JoinHandle<()>,
}

impl StaticFile {
    /// Serves `content` at `http://127.0.0.1:<port>/<name>`.
    pub async fn serve(name: &str, content: Bytes) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (requests_tx, requests) = Inbox::new("static file server: requests");
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let content = content.clone();
                let requests_tx = requests_tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0_u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let line = text.lines().next().unwrap_or_default().to_owned();
                    let found = line.starts_with("GET ");
                    let _ = requests_tx.send(line);
                    let (status, body) = if found {
                        ("200 OK", content)
                    } else {
                        ("405 Method Not Allowed", Bytes::new())
                    };
                    let header = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(header.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            url: format!("http://{addr}/{name}"),
            requests,
            task,
        }
    }
}

impl Drop for StaticFile {
    fn drop(&mut self) {
        self.task.abort();
    }
}
