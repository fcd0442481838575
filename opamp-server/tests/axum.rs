//! Mounted in axum next to another route: both transports on one path
//! (WS-16, HTTP-04), the peer address through a small middleware.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::Full;
use opamp_server::{OpampServer, PeerInfo};
use opamp_testkit::*;

/// Hands the socket address to the OpAMP server.
async fn peer_info(
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(PeerInfo {
        addr: Some(addr),
        certificates: None,
    });
    next.run(request).await
}

#[tokio::test]
async fn gen_01_mounted_in_axum_serves_both_transports() {
    let (recorder, _seen) = ServerRecorder::new();
    let server = OpampServer::new(recorder);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route_service("/v1/opamp", server.clone())
        .layer(middleware::from_fn(peer_info));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .into_future(),
    );

    // The neighbouring route.
    let health = http::Request::get(format!("http://{addr}/healthz"))
        .header(header::HOST, addr.to_string())
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = http_request(addr, health).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body().as_ref(), b"ok");

    // Plain HTTP.
    let reply = http_exchange(addr, &report(uid(1), 0)).await;
    assert_eq!(reply.instance_uid, uid(1).to_bytes());
    // WebSocket on the same path.
    let mut ws = ws_connect(addr).await;
    ws_send(&mut ws, &report(uid(2), 0)).await;
    assert_eq!(ws_recv(&mut ws).await.instance_uid, uid(2).to_bytes());

    let peers = server.callbacks().peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 2);
    assert!(
        peers
            .iter()
            .all(|peer| peer.addr.is_some_and(|a| a.ip().is_loopback()))
    );
    let connection = server.registry().connection(uid(2)).unwrap();
    assert!(connection.peer_addr().is_some());

    // Mounted elsewhere, the server closes its WebSockets itself (1001).
    let shutting_down = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    assert_eq!(ws_close_code(&mut ws).await, Some(1001));
    assert!(shutting_down.await.unwrap(), "drained within the timeout");
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
