//! End to end: the syncer downloading through the transport's `HttpPoster`
//! from a real HTTP server on 127.0.0.1 (PKG-06, PKG-08).

mod packages_support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt as _};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opamp_client::{MemoryPackageStore, PackageSyncer};
use opamp_proto::PackageStatusEnum;
use opamp_transport::ClientOptions;
use opamp_transport::http::client::HttpPoster;
use packages_support::*;
use tokio::net::TcpListener;

const PAYLOAD: &[u8] = b"a package file served over real HTTP, long enough to arrive in pieces";

async fn handle(
    request: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|v| v == "Bearer secret");
    let response = match request.uri().path() {
        "/pkg" if authorized => Response::new(Full::new(Bytes::from_static(PAYLOAD)).boxed()),
        "/pkg" => Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        // Announces 100 bytes, sends 10, then holds the connection open.
        "/stall" => {
            let body = stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(
                b"0123456789",
            )))])
            .chain(stream::pending());
            Response::builder()
                .header("content-length", "100")
                .body(BodyExt::boxed(StreamBody::new(body)))
                .unwrap()
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
    };
    Ok(response)
}

/// Serves [`handle`] on an ephemeral loopback port.
async fn server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
    format!("http://{address}")
}

fn poster(base: &str) -> Arc<HttpPoster> {
    let options = ClientOptions::new(format!("{base}/v1/opamp").parse().unwrap())
        .with_request_timeout(Duration::from_secs(120));
    Arc::new(HttpPoster::new(options).unwrap())
}

/// A fresh [`server`] and a syncer downloading from it into a fresh store,
/// giving up on a download idle for `idle_timeout`.
async fn start(
    idle_timeout: Duration,
) -> (
    String,
    MemoryPackageStore,
    PackageSyncer,
    Arc<Mutex<Vec<Outcome>>>,
) {
    let base = server().await;
    let store = MemoryPackageStore::new();
    let (on_event, events) = event_log();
    let syncer = PackageSyncer::builder(Arc::new(store.clone()), poster(&base))
        .idle_timeout(idle_timeout)
        .on_event(on_event)
        .start()
        .await
        .unwrap();
    (base, store, syncer, events)
}

#[tokio::test]
async fn pkg06_pkg08_downloads_with_offered_headers_over_http() {
    // The default idle timeout.
    let (base, store, syncer, events) = start(Duration::from_secs(30)).await;

    let url = format!("{base}/pkg");
    syncer.offer(offer(&[
        (
            "good",
            with_headers(
                package("1", &url, PAYLOAD),
                &[("Authorization", "Bearer secret")],
            ),
        ),
        // Same file without the credential header: the server refuses.
        ("no-auth", package("1", &url, PAYLOAD)),
        ("missing", package("1", &format!("{base}/nope"), b"x")),
    ]));
    syncer.wait_idle().await;

    assert_eq!(store.content("good").as_deref(), Some(PAYLOAD));
    let statuses = syncer.statuses();
    assert_eq!(
        status_of(&statuses, "good").status(),
        PackageStatusEnum::Installed
    );
    let no_auth = status_of(&statuses, "no-auth");
    assert_eq!(no_auth.status(), PackageStatusEnum::InstallFailed);
    assert!(
        no_auth.error_message.contains("401"),
        "{}",
        no_auth.error_message
    );
    assert!(
        status_of(&statuses, "missing")
            .error_message
            .contains("404")
    );
    let failures = events
        .lock()
        .unwrap()
        .iter()
        .filter(|o| {
            matches!(
                o,
                Outcome::Failed {
                    kind: "DownloadStatus",
                    ..
                }
            )
        })
        .count();
    assert_eq!(failures, 2);
}

#[tokio::test]
async fn a_stalled_http_body_fails_instead_of_hanging() {
    // Real time: the server really stops sending. The test waits for the
    // outcome, not for a duration.
    let (base, store, syncer, events) = start(Duration::from_millis(300)).await;
    syncer.offer(offer(&[(
        "slow",
        package("1", &format!("{base}/stall"), &[0; 100]),
    )]));
    syncer.wait_idle().await;

    assert_eq!(
        events.lock().unwrap().as_slice(),
        [Outcome::Failed {
            name: "slow".into(),
            kind: "Stalled"
        }]
    );
    assert!(store.content("slow").is_none());
}
