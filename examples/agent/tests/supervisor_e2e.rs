//! The agent in supervisor mode, end to end: it supervises a small bash
//! script, restarts it with each pushed config and on the restart command,
//! reports its health and the effective config, swaps in a new executable
//! offered as a signed top-level package, rolls back one that does not stay
//! up, refuses one with a bad signature, and stops the child on SIGTERM.
//!
//! The child script connects back to the test over TCP when it starts and
//! tells its version, pid and config; it keeps the connection open until it
//! is stopped, so the test sees each start and each stop as they happen.

mod agent_support;

use std::collections::BTreeMap;

use agent_support::child::{ChildHome, accept_report, write_executable};
use agent_support::{
    PATIENCE, TestServer, assert_contains, attribute, config, effective_body, process_health,
    state_dir,
};
use bytes::Bytes;
use opamp_proto::{
    DownloadableFile, PackageAvailable, PackageStatusEnum, PackageType, PackagesAvailable,
};
use opamp_server::{AgentRecord, RemoteConfigState};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A child script of version `version` that reports to `port`.
fn child_script(version: &str, port: u16) -> String {
    format!(
        r#"#!/bin/bash
exec 3<>/dev/tcp/127.0.0.1/{port}
if [ "$OPAMP_CONFIG_FILE" = "$1" ]; then env=env-ok; else env=env-bad; fi
printf '{version} %s %s %s\n' "$$" "$env" "$(tr '\n' ' ' < "$1")" >&3
read -r -u 3 _
"#
    )
}

/// One start of the child, as it reported itself.
struct ChildStart {
    version: String,
    pid: String,
    config: String,
    /// Open until the child exits.
    connection: BufReader<TcpStream>,
}

async fn next_child(reports: &TcpListener) -> ChildStart {
    let (connection, line) = accept_report(reports).await;
    let mut parts = line.trim_end().splitn(4, ' ');
    let version = parts.next().unwrap().to_owned();
    let pid = parts.next().unwrap().to_owned();
    assert_eq!(
        parts.next(),
        Some("env-ok"),
        "OPAMP_CONFIG_FILE differs from {{config}}"
    );
    let config = parts.next().unwrap_or_default().trim().to_owned();
    ChildStart {
        version,
        pid,
        config,
        connection,
    }
}

impl ChildStart {
    /// Waits until this child has exited (its connection closes).
    async fn exited(mut self) {
        let mut rest = String::new();
        let read = tokio::time::timeout(PATIENCE, self.connection.read_line(&mut rest))
            .await
            .expect("child still running");
        assert_eq!(read.unwrap(), 0, "unexpected output {rest:?}");
    }
}

/// The supervised child's health component.
fn child_health(record: &AgentRecord) -> Option<&opamp_proto::ComponentHealth> {
    process_health(record, "child-v1.sh")
}

struct Packager {
    key: Ed25519KeyPair,
    files: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Bytes>>>,
    base: String,
}

impl Packager {
    /// A top-level package offer for `content`, served by the test and
    /// signed with `signer` (Ed25519 over the SHA-256 digest).
    fn offer(&self, version: &str, content: &str, signer: &Ed25519KeyPair) -> PackagesAvailable {
        let content = Bytes::copy_from_slice(content.as_bytes());
        let digest: [u8; 32] = Sha256::digest(&content).into();
        let path = format!("/agent-{version}");
        self.files.lock().unwrap().insert(path.clone(), content);
        let package = PackageAvailable {
            r#type: PackageType::TopLevel as i32,
            version: version.to_owned(),
            file: Some(DownloadableFile {
                download_url: format!("{}{path}", self.base),
                content_hash: Bytes::copy_from_slice(&digest),
                signature: Bytes::copy_from_slice(signer.sign(&digest).as_ref()),
                headers: None,
            }),
            hash: Bytes::copy_from_slice(&Sha256::digest(version.as_bytes())),
        };
        PackagesAvailable {
            packages: [(String::new(), package)].into(),
            all_packages_hash: Bytes::new(),
        }
    }
}

fn key_pair() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

/// Waits for the offer `all_packages_hash` to fail to install; returns the
/// record and the package's error message.
async fn install_failed(
    server: &mut TestServer,
    uid: opamp_proto::InstanceUid,
    all_packages_hash: &Bytes,
) -> (AgentRecord, String) {
    let record = wait_package(
        server,
        uid,
        all_packages_hash,
        PackageStatusEnum::InstallFailed,
    )
    .await;
    let error = record.status.package_statuses.as_ref().unwrap().packages[""]
        .error_message
        .clone();
    (record, error)
}

async fn wait_package(
    server: &mut TestServer,
    uid: opamp_proto::InstanceUid,
    all_packages_hash: &Bytes,
    wanted: PackageStatusEnum,
) -> AgentRecord {
    server
        .wait_for(uid, &format!("package status {wanted:?}"), |record| {
            record
                .status
                .package_statuses
                .as_ref()
                .is_some_and(|statuses| {
                    statuses.server_provided_all_packages_hash == *all_packages_hash
                        && statuses
                            .packages
                            .get("")
                            .is_some_and(|status| status.status() == wanted)
                })
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_restarts_updates_and_rolls_back_its_child() {
    let mut server = TestServer::start().await;
    let ChildHome { dir, reports, port } = ChildHome::new().await;
    let script = dir.path().join("child-v1.sh");
    write_executable(&script, &child_script("v1", port));

    let files = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, Bytes>::new()));
    let served = std::sync::Arc::clone(&files);
    let (files_addr, _files_task) = agent_support::serve_http(move |request| {
        match served.lock().unwrap().get(request.uri().path()) {
            Some(content) => http::Response::new(content.clone()),
            None => http::Response::builder()
                .status(404)
                .body(Bytes::new())
                .unwrap(),
        }
    })
    .await;
    let packager = Packager {
        key: key_pair(),
        files,
        base: format!("http://{files_addr}"),
    };

    let state = state_dir(dir.path());
    let public_key = hex::encode(packager.key.public_key().as_ref());
    let agent = server.start_supervisor(
        dir.path(),
        &[
            "--heartbeat",
            "1s",
            "--update-probation",
            "2s",
            "--stop-timeout",
            "10s",
            "--package-key",
            &public_key,
        ],
        &script,
    );

    // The child starts at once, with the (empty) default config file.
    let first = next_child(&reports).await;
    assert_eq!((first.version.as_str(), first.config.as_str()), ("v1", ""));
    let (uid, _) = server.next_connected().await;
    let record = server
        .wait_for(uid, "a running child", |record| {
            child_health(record).is_some_and(|health| health.healthy)
        })
        .await;
    let health = child_health(&record).unwrap();
    assert_eq!(health.status, "running");
    assert_eq!(attribute(health, "restart_count").as_deref(), Some("0"));

    // Two configs: each restarts the child with the new file.
    let mut previous = first;
    for (round, mode) in ["a", "b"].into_iter().enumerate() {
        let body = format!("mode: {mode}\n");
        let offer = server
            .registry
            .set_remote_config(uid, config("", &body))
            .await
            .unwrap();
        let started = next_child(&reports).await;
        assert_eq!(started.config, format!("mode: {mode}"));
        assert_ne!(started.pid, previous.pid);
        previous.exited().await;
        let outcome = server.config_outcome(uid, &offer.hash).await;
        assert_eq!(outcome, RemoteConfigState::Applied);
        let restarts = (round + 1).to_string();
        let pid = started.pid.clone();
        server
            .wait_for(uid, "the restarted child and its config", |record| {
                effective_body(record, "").as_deref() == Some(body.as_bytes())
                    && child_health(record).is_some_and(|health| {
                        health.healthy
                            && attribute(health, "restart_count").as_deref() == Some(&restarts)
                            && attribute(health, "process.pid").as_deref() == Some(&pid)
                    })
            })
            .await;
        previous = started;
    }

    // The restart command restarts the child with the same config.
    server.registry.restart(uid).await.unwrap();
    let started = next_child(&reports).await;
    assert_eq!(
        (started.version.as_str(), started.config.as_str()),
        ("v1", "mode: b")
    );
    previous.exited().await;
    let pid = started.pid.clone();
    server
        .wait_for(uid, "the child after the restart command", |record| {
            child_health(record).is_some_and(|health| {
                attribute(health, "restart_count").as_deref() == Some("3")
                    && attribute(health, "process.pid").as_deref() == Some(&pid)
            })
        })
        .await;
    previous = started;

    // A signed top-level package: the new executable replaces the child
    // and, having stayed up, is INSTALLED.
    let good = packager.offer("2.0.0", &child_script("v2", port), &packager.key);
    let offer = server.registry.offer_packages(uid, good).await.unwrap();
    let started = next_child(&reports).await;
    assert_eq!(
        (started.version.as_str(), started.config.as_str()),
        ("v2", "mode: b")
    );
    previous.exited().await;
    let record = wait_package(&mut server, uid, &offer.hash, PackageStatusEnum::Installed).await;
    let health = child_health(&record).unwrap();
    let program = attribute(health, "process.executable.path").unwrap();
    assert!(
        program.starts_with(state.join("supervised").to_str().unwrap()),
        "{program}"
    );
    previous = started;

    // A package that exits at once: rolled back to v2, INSTALL_FAILED.
    let bad = packager.offer("3.0.0", "#!/bin/sh\nexit 3\n", &packager.key);
    let offer = server.registry.offer_packages(uid, bad).await.unwrap();
    let rolled_back = next_child(&reports).await;
    assert_eq!(rolled_back.version, "v2");
    previous.exited().await;
    let (_, error) = install_failed(&mut server, uid, &offer.hash).await;
    assert_contains(&error, "rolled back");
    assert_contains(&error, "exit status: 3");
    let pid = rolled_back.pid.clone();
    let record = server
        .wait_for(uid, "the rolled-back child running", |record| {
            child_health(record).is_some_and(|health| {
                health.healthy && attribute(health, "process.pid").as_deref() == Some(&pid)
            })
        })
        .await;
    let health = child_health(&record).unwrap();
    assert_eq!(
        attribute(health, "process.executable.path").unwrap(),
        program
    );
    assert_contains(&health.last_error, "rolled back");
    let restarts = attribute(health, "restart_count").unwrap();

    // PKG-09: a package signed with another key is refused before it runs.
    let forged = packager.offer("4.0.0", &child_script("v4", port), &key_pair());
    let offer = server.registry.offer_packages(uid, forged).await.unwrap();
    let (record, error) = install_failed(&mut server, uid, &offer.hash).await;
    assert_contains(&error, "signature");
    let health = child_health(&record).unwrap();
    assert_eq!(attribute(health, "restart_count").unwrap(), restarts);
    assert_eq!(attribute(health, "process.pid").unwrap(), rolled_back.pid);

    // SIGTERM: the child is stopped first, then the agent exits cleanly.
    let exit = agent.terminate().await;
    assert!(exit.success(), "{exit}");
    rolled_back.exited().await;
}
