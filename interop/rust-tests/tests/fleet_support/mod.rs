//! Shared by the tests that run the example fleet server and the example
//! agent together as processes: starting them, and plain HTTP calls to the
//! server's API.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opamp_client::proto::config_hash;
use opamp_interop_tests::FleetServerProcess;
use opamp_testkit::{body_bytes, config_file};
use serde_json::Value;
use tokio::process::{Child, Command};

/// The `fleet-server` process with its data in `data_dir` (reused by a
/// restart) and `args` and `envs` added.
pub async fn start_fleet_server(
    args: &[&str],
    envs: &[(&str, &str)],
    data_dir: &Path,
) -> FleetServerProcess {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    FleetServerProcess::launch(
        Path::new(env!("CARGO_BIN_EXE_fleet-server")),
        &args,
        envs,
        Some(data_dir),
    )
    .await
}

/// The example agent as a process, with its own state directory.
pub fn start_agent_process(endpoint: String, service: &str, state_dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_example-agent"))
        .args([
            "--endpoint",
            &endpoint,
            "--service-name",
            service,
            "--heartbeat",
            "1s",
        ])
        .arg("--state-dir")
        .arg(state_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("agent starts")
}

/// Sends `request` on a new HTTP/1.1 connection to `addr`.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> hyper::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender.send_request(request).await.expect("response")
}

/// An API call; returns the status and the JSON body (`Null` when empty or
/// not JSON).
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("request");
    let response = send(addr, request).await;
    let status = response.status();
    let bytes = body_bytes(response).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A GET that must answer 200.
pub async fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = call(addr, Method::GET, path, "application/json", "").await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

/// Pushes a one-file config to `uid` through the API at `web`; returns its
/// hash (hex).
pub async fn push_config(web: SocketAddr, uid: impl std::fmt::Display, body: &str) -> String {
    let (status, reply) = call(
        web,
        Method::PUT,
        &format!("/api/agents/{uid}/config?file=collector.yaml"),
        "text/yaml",
        body,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let expected = config_file("collector.yaml", "text/yaml", body);
    let hash = hex::encode(config_hash(&expected));
    assert_eq!(reply["config_hash"], hash);
    hash
}
