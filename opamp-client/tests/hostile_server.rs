//! A real `OpampClient` against servers that misbehave: never answer,
//! answer garbage, redirect in circles. The client reports typed errors
//! through `on_connect_failed`, keeps retrying with backoff, never panics,
//! and `stop()` always returns.
//!
//! Tests that wait on timeouts or backoff run on tokio's paused clock, so
//! those happen instantly and deterministically; no wall-clock asserts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opamp_client::{AgentDescription, Callbacks, OpampClient, TransportError};
use opamp_proto::{AgentToServer, Message, ServerToAgent};
use opamp_testkit::within;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Forwards connection outcomes to the test.
struct Watcher {
    failures: mpsc::UnboundedSender<String>,
}

impl Callbacks for Watcher {
    fn on_connect_failed(&self, error: &TransportError) {
        let _ = self.failures.send(error.to_string());
    }
}

fn client(endpoint: String) -> (OpampClient, mpsc::UnboundedReceiver<String>) {
    let (failures, failed) = mpsc::unbounded_channel();
    let client = OpampClient::builder(endpoint)
        .agent_description(AgentDescription::for_service("io.example.agent", "1.0"))
        .connect_timeout(Duration::from_secs(5))
        .request_timeout(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(5))
        .callbacks(Watcher { failures })
        .build()
        .unwrap();
    (client, failed)
}

/// Fails unless every reported failure mentions one of `words`.
#[track_caller]
fn assert_each_mentions(reported: &[String], words: &[&str]) {
    assert!(
        reported
            .iter()
            .all(|error| words.iter().any(|word| error.contains(word))),
        "{reported:?}"
    );
}

async fn failures(failed: &mut mpsc::UnboundedReceiver<String>, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < count {
        seen.push(
            within("a reported failure", failed.recv())
                .await
                .expect("callbacks alive"),
        );
    }
    seen
}

/// A TCP server that accepts, reads and never says anything. Returns its
/// address and the number of connections it got.
async fn silent_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
            });
        }
    });
    (addr, accepted)
}

/// CONN-03, ERR-04: a WebSocket server that accepts TCP but never answers
/// the upgrade: each attempt times out (typed, reported), the client
/// retries, and `stop()` returns.
#[tokio::test(start_paused = true)]
async fn server_that_never_answers_the_upgrade() {
    let (addr, accepted) = silent_server().await;
    let (client, mut failed) = client(format!("ws://{addr}/v1/opamp"));
    client.start().await.unwrap();
    let reported = failures(&mut failed, 3).await;
    assert_each_mentions(&reported, &["timed out", "timeout"]);
    assert!(accepted.load(Ordering::SeqCst) >= 3, "it kept retrying");
    within("stop", client.stop()).await;
    assert!(client.is_stopped());
}

/// ERR-04, HTTP-21: a plain-HTTP server that never answers a request: each
/// request times out, is retried, and `stop()` (whose goodbye is not
/// answered either) returns within the shutdown timeout.
#[tokio::test(start_paused = true)]
async fn http_server_that_never_answers() {
    let (addr, accepted) = silent_server().await;
    let (client, mut failed) = client(format!("http://{addr}/v1/opamp"));
    client.start().await.unwrap();
    failures(&mut failed, 3).await;
    assert!(accepted.load(Ordering::SeqCst) >= 1);
    within("stop", client.stop()).await;
    assert!(client.is_stopped());
}

/// A WebSocket server that answers with garbage: frames with a bad header
/// or bad protobuf are dropped and the connection carries on (WS-04); a
/// text frame makes the client close with 1003 and reconnect (WS-01,
/// WS-19).
// Real time: nothing here waits on a timer, and paused time would jump
// ahead while bytes are on the loopback wire.
#[tokio::test]
async fn websocket_server_answering_garbage() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, _failed) = client(format!("ws://{addr}/v1/opamp"));
    client.start().await.unwrap();

    let (tcp, _) = within("first connection", listener.accept()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let first = next_message(&mut ws).await;
    assert!(first.agent_description.is_some(), "full first report");
    for garbage in [
        vec![0x07, 0x0a, 0x00],             // non-zero header
        vec![0x00, 0x0a, 0xff, 0xff, 0x01], // lying length
        vec![0x00, 0x0f, 0x00],             // wire type 7
        vec![],                             // no header at all
    ] {
        ws.send(WsMessage::Binary(Bytes::from(garbage)))
            .await
            .unwrap();
    }
    // Still the same connection: a change is reported on it.
    client.set_agent_description(AgentDescription::for_service("io.example.agent", "2.0"));
    let update = next_message(&mut ws).await;
    assert_eq!(update.sequence_num, first.sequence_num + 1);
    assert!(update.agent_description.is_some());

    ws.send(WsMessage::Text("not protobuf".into()))
        .await
        .unwrap();
    let code = within("the client's Close", async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(frame))) => {
                    break frame.map(|frame| u16::from(frame.code));
                }
                Some(Ok(_)) => continue,
                _ => break None,
            }
        }
    })
    .await;
    assert_eq!(code, Some(1003));
    drop(ws);
    // WS-19: it comes back on its own.
    let (tcp, _) = within("reconnect", listener.accept()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let again = next_message(&mut ws).await;
    assert!(again.sequence_num > update.sequence_num);
    let ack = ServerToAgent {
        instance_uid: again.instance_uid.clone(),
        ..Default::default()
    };
    ws.send(WsMessage::Binary(
        opamp_transport::encode_frame(&ack, usize::MAX).unwrap(),
    ))
    .await
    .unwrap();
    let stopping = tokio::spawn(async move {
        client.stop().await;
        client
    });
    let goodbye = next_message(&mut ws).await;
    assert!(goodbye.agent_disconnect.is_some(), "WS-17");
    drop(ws);
    assert!(within("stop", stopping).await.unwrap().is_stopped());
}

async fn next_message(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> AgentToServer {
    within("an AgentToServer", async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Binary(data))) => {
                    break opamp_transport::decode_frame(
                        data,
                        usize::MAX,
                        opamp_transport::HeaderlessFrames::Reject,
                    )
                    .expect("the client sends valid frames");
                }
                Some(Ok(_)) => continue,
                other => panic!("connection lost: {other:?}"),
            }
        }
    })
    .await
}

type Answer = Arc<dyn Fn(usize, &str) -> Response<Full<Bytes>> + Send + Sync>;

/// A plain-HTTP server answering request number `n` (from 0) with
/// `answer(n, uri)`; returns its address and the request count.
async fn http_server(
    answer: Answer,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<AgentToServer>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let (received_tx, received) = mpsc::unbounded_channel();
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            // Small responses go out at once (no Nagle delay), so paused
            // time never runs ahead of bytes still on the wire.
            stream.set_nodelay(true).unwrap();
            let answer = Arc::clone(&answer);
            let counter = Arc::clone(&counter);
            let received_tx = received_tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let answer = Arc::clone(&answer);
                    let counter = Arc::clone(&counter);
                    let received_tx = received_tx.clone();
                    async move {
                        let number = counter.fetch_add(1, Ordering::SeqCst);
                        let uri = request.uri().to_string();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        if let Ok(message) = AgentToServer::decode(body) {
                            let _ = received_tx.send(message);
                        }
                        Ok::<_, Infallible>(answer(number, &uri))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, count, received)
}

fn protobuf(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

/// HTTP-18: `200 OK` bodies that are not a `ServerToAgent` are failed
/// responses: a typed decode error each, reported, never processed; the
/// client goes on polling and carries on once the server recovers.
#[tokio::test(start_paused = true)]
async fn http_server_answering_garbage() {
    let answer: Answer = Arc::new(|number, _| match number {
        0 => protobuf(Bytes::from_static(&[0x0a, 0xff, 0xff, 0x01])),
        1 => protobuf(Bytes::from_static(&[0x0f, 0x00])),
        2 => protobuf(Bytes::from(vec![0xff; 64])),
        _ => protobuf(ServerToAgent::default().encode_to_vec().into()),
    });
    let (addr, count, mut received) = http_server(answer).await;
    let (client, mut failed) = client(format!("http://{addr}/v1/opamp"));
    client.start().await.unwrap();
    let reported = failures(&mut failed, 3).await;
    assert_each_mentions(&reported, &["decode", "Protobuf"]);
    let mut requests = Vec::new();
    while requests.len() < 4 {
        requests.push(within("a request", received.recv()).await.unwrap());
    }
    // SEQ-01: one number per request, in order.
    for pair in requests.windows(2) {
        assert!(pair[1].sequence_num > pair[0].sequence_num, "{pair:?}");
    }
    let stopping = tokio::spawn(async move {
        client.stop().await;
        client
    });
    let goodbye = within("goodbye", async {
        loop {
            let request = received.recv().await.unwrap();
            if request.agent_disconnect.is_some() {
                break request;
            }
        }
    })
    .await;
    assert!(goodbye.agent_disconnect.is_some());
    assert!(within("stop", stopping).await.unwrap().is_stopped());
    assert!(count.load(Ordering::SeqCst) >= 5);
}

/// A server that redirects every request to itself: the transport refuses
/// the loop (a typed error), the client backs off and retries, and every
/// attempt costs a bounded number of requests.
#[tokio::test(start_paused = true)]
async fn http_redirect_loop_is_refused_and_bounded() {
    let answer: Answer = Arc::new(|number, uri| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        // Alternate between two paths, so the loop is not a trivial self-reference.
        let next = if number % 2 == 0 {
            "/v1/elsewhere"
        } else {
            "/v1/opamp"
        };
        let _ = uri;
        response
            .headers_mut()
            .insert(header::LOCATION, http::HeaderValue::from_static(next));
        response
    });
    let (addr, count, _received) = http_server(answer).await;
    let (client, mut failed) = client(format!("http://{addr}/v1/opamp"));
    client.start().await.unwrap();
    let attempts = 4;
    let reported = failures(&mut failed, attempts).await;
    assert!(
        reported.iter().all(|error| error.contains("redirect")),
        "{reported:?}"
    );
    let per_attempt = opamp_transport::DEFAULT_MAX_REDIRECTS + 1;
    within("stop", client.stop()).await;
    // Every attempt, including the goodbye, failed and was reported.
    let total = attempts + std::iter::from_fn(|| failed.try_recv().ok()).count();
    assert!(
        count.load(Ordering::SeqCst) <= (total + 1) * per_attempt,
        "{} requests for {total} attempts",
        count.load(Ordering::SeqCst)
    );
}
