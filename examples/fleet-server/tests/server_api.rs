//! The fleet server's JSON API against the in-process server with an
//! in-memory store; agents speak plain HTTP through the same router.

mod server_common;

use http::{Method, StatusCode};
use opamp_proto::{AgentCapabilities, RemoteConfigStatuses, config_hash};
use serde_json::json;
use server_common::*;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn list_and_detail_show_the_merged_agent_state() {
    let h = harness(|_| {}).await;
    let mut agent = TestAgent::new(uid(1), "checkout", FULL_CAPABILITIES);
    h.poll(&agent.hello()).await;
    // A compressed poll leaves the merged state as it was (SEQ-02).
    h.poll(&agent.heartbeat()).await;

    let (status, list) = h.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK);
    let agents = list.as_array().expect("array");
    assert_eq!(agents.len(), 1);
    let a = &agents[0];
    assert_eq!(a["instance_uid"], uid(1).to_string());
    assert_eq!(a["connected"], true);
    assert_eq!(a["transport"], "http");
    assert_eq!(a["description"]["identifying"]["service.name"], "checkout");
    assert_eq!(
        a["description"]["non_identifying"]["host.name"],
        "test-host"
    );
    let capabilities: Vec<&str> = a["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(capabilities.contains(&"AcceptsRemoteConfig"));
    assert!(capabilities.contains(&"AcceptsOpAMPConnectionSettings"));
    assert_eq!(a["health"]["healthy"], true);
    assert_eq!(
        a["health"]["components"]["receiver/otlp"]["last_error"],
        "port in use"
    );
    let effective = config("agent.yaml", "text/yaml", "start: true\n");
    assert_eq!(
        a["effective_config"]["hash"],
        hex::encode(config_hash(&effective))
    );
    assert_eq!(a["effective_config"]["files"], json!(["agent.yaml"]));
    assert!(
        a["effective_config"].get("bodies").is_none(),
        "bodies only in the detail"
    );
    assert_eq!(a["sequence_num"], 1);
    let last_seen = a["last_seen"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(last_seen).is_ok(),
        "RFC 3339: {last_seen}"
    );

    let (status, detail) = h.get(&agent_path(uid(1), "")).await;
    assert_eq!(status, StatusCode::OK);
    let file = &detail["effective_config"]["bodies"]["agent.yaml"];
    assert_eq!(file["body"], "start: true\n");
    assert_eq!(file["content_type"], "text/yaml");
    assert!(detail["events"].is_array());
    assert!(detail["config_history"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn unknown_uid_is_404_and_a_malformed_one_400() {
    let h = harness(|_| {}).await;
    let (status, body) = h.get(&agent_path(uid(9), "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "unknown_agent");
    let (status, _) = h
        .put(&agent_path(uid(9), "/config"), "text/yaml", "a: 1")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h
        .request(Method::POST, &agent_path(uid(9), "/restart"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = h.get("/api/agents/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "bad_request");
    let (status, body) = h.get("/api/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].is_string());
}

/// RCFG-02/03/06/07: the pushed config reaches the HTTP agent on its next
/// poll with the hash and content type given, and its APPLIED report shows
/// up as the push status and in the history.
#[tokio::test]
async fn rcfg_pushed_config_is_applied_and_recorded() {
    let h = harness(|_| {}).await;
    let mut agent = TestAgent::new(uid(2), "cart", FULL_CAPABILITIES);
    h.poll(&agent.hello()).await;
    let mut events = h.events().await;

    let body = "receivers:\n  otlp: {}\n";
    let (status, reply) = h
        .put(
            &agent_path(uid(2), "/config?file=collector.yaml"),
            "application/yaml",
            body,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let expected = config("collector.yaml", "application/yaml", body);
    let hash = config_hash(&expected);
    assert_eq!(reply["config_hash"], hex::encode(&hash));

    // HTTP-15: delivered on the next poll.
    let offer = h.config_offer(&agent.heartbeat()).await;
    assert_eq!(offer.config_hash, hash);
    assert_eq!(offer.config, Some(expected.clone()));

    let detail = h.detail(uid(2)).await;
    assert_eq!(detail["desired_config"]["state"], "PENDING");
    assert_eq!(detail["desired_config"]["source"]["kind"], "agent");

    h.poll(&agent.report(&hash, RemoteConfigStatuses::Applied, Some(expected)))
        .await;
    let detail = h.detail_with_outcome(&mut events, uid(2), "APPLIED").await;
    assert_eq!(detail["desired_config"]["state"], "APPLIED");
    assert_eq!(detail["remote_config_status"]["status"], "APPLIED");
    assert_eq!(
        detail["remote_config_status"]["config_hash"],
        hex::encode(&hash)
    );
    assert_eq!(detail["effective_config"]["hash"], hex::encode(&hash));
    assert_eq!(
        detail["effective_config"]["bodies"]["collector.yaml"]["body"],
        body
    );
    assert_eq!(detail["config_history"].as_array().unwrap().len(), 1);

    // A failing config is recorded with the agent's error message.
    let (_, reply) = h
        .put(&agent_path(uid(2), "/config"), "text/yaml", "bad")
        .await;
    let bad_hash = h.config_offer(&agent.heartbeat()).await.config_hash;
    assert_eq!(reply["config_hash"], hex::encode(&bad_hash));
    h.poll(&agent.report(&bad_hash, RemoteConfigStatuses::Failed, None))
        .await;
    let detail = h.detail_with_outcome(&mut events, uid(2), "FAILED").await;
    assert_eq!(detail["desired_config"]["state"], "FAILED");
    assert_eq!(detail["desired_config"]["error_message"], "bad config");
    assert_eq!(detail["config_history"][0]["error_message"], "bad config");
    assert_eq!(detail["config_history"][1]["outcome"], "APPLIED");
}

/// Spec v0.20.0: configuration objects carry a role, and any key, "" included,
/// may sit beside others (several keys can be views of one configuration).
/// Roles go in through the API (`?role=` and group files), out to the agent
/// in the offer and in the hash, and back out of the JSON from what the agent
/// reports.
#[tokio::test]
async fn rcfg_roles_and_several_keys_round_trip_through_the_json_api() {
    let h = harness(|_| {}).await;
    let mut agent = TestAgent::new(uid(3), "inventory", FULL_CAPABILITIES);
    h.poll(&agent.hello()).await;

    // One object with a role through PUT.
    let (status, reply) = h
        .put(
            &agent_path(uid(3), "/config?file=main.yaml&role=main"),
            "text/yaml",
            "a: 1\n",
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut single = config("main.yaml", "text/yaml", "a: 1\n");
    single.config_map.get_mut("main.yaml").unwrap().role = "main".into();
    assert_eq!(reply["config_hash"], hex::encode(config_hash(&single)));
    assert_ne!(
        reply["config_hash"],
        hex::encode(config_hash(&config("main.yaml", "text/yaml", "a: 1\n"))),
        "the role is part of the hash"
    );
    let offer = h.config_offer(&agent.heartbeat()).await;
    assert_eq!(offer.config, Some(single));

    // Two views of one configuration, "" among them, through a group.
    let (status, reply) = h
        .json(
            Method::PUT,
            "/api/config/groups/inventory",
            json!({
                "selector": { "service.name": "inventory" },
                "config": { "files": {
                    "": { "content_type": "text/yaml", "body": "x: 2\n", "role": "expanded" },
                    "collector.yaml": { "content_type": "text/yaml", "body": "x: ${X}\n" }
                } }
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let mut views = config("", "text/yaml", "x: 2\n");
    views.config_map.get_mut("").unwrap().role = "expanded".into();
    views
        .config_map
        .extend(config("collector.yaml", "text/yaml", "x: ${X}\n").config_map);
    let hash = config_hash(&views);
    assert_eq!(reply["config_hash"], hex::encode(&hash));
    let (_, all) = h.get("/api/config").await;
    let files = &all["groups"]["inventory"]["config"]["files"];
    assert_eq!(files[""]["role"], "expanded");
    assert_eq!(files["collector.yaml"]["role"], "");
    assert_eq!(files[""]["body"], "x: 2\n");

    // The agent's own config still wins; dropping it lets the group's through.
    let (status, _) = h
        .request(Method::DELETE, &agent_path(uid(3), "/config"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let offer = h.config_offer(&agent.heartbeat()).await;
    assert_eq!(offer.config_hash, hash);
    assert_eq!(offer.config, Some(views.clone()));

    let mut events = h.events().await;
    h.poll(&agent.report(&hash, RemoteConfigStatuses::Applied, Some(views)))
        .await;
    let detail = h
        .detail_when(&mut events, uid(3), "APPLIED", |detail| {
            detail["desired_config"]["state"] == "APPLIED"
        })
        .await;
    assert_eq!(detail["effective_config"]["hash"], hex::encode(&hash));
    assert_eq!(
        detail["effective_config"]["files"],
        json!(["", "collector.yaml"])
    );
    for view in ["effective_config", "desired_config"] {
        let bodies = &detail[view]["bodies"];
        assert_eq!(bodies[""]["role"], "expanded", "{view}");
        assert_eq!(bodies["collector.yaml"]["role"], "", "{view}");
        assert_eq!(bodies["collector.yaml"]["body"], "x: ${X}\n", "{view}");
    }
}

/// RCFG-02, CMD-01, PKG-01, CS-01, CUS-04: offers the agent did not declare
/// it accepts are refused with 409.
#[tokio::test]
async fn undeclared_capabilities_are_409() {
    let h = harness(|_| {}).await;
    let mut agent = TestAgent::new(uid(3), "bare", AgentCapabilities::REPORTS_STATUS);
    h.poll(&agent.hello()).await;
    let base = agent_path(uid(3), "");
    std::fs::create_dir_all(h.dir.path().join("packages")).unwrap();
    std::fs::write(h.dir.path().join("packages/tool.bin"), b"tool").unwrap();

    let checks = [
        h.put(&format!("{base}/config"), "text/yaml", "a: 1").await,
        h.request(Method::POST, &format!("{base}/restart")).await,
        h.post_json(&format!("{base}/packages"), json!({ "file": "tool.bin" }))
            .await,
        h.json(
            Method::PUT,
            &format!("{base}/heartbeat"),
            json!({ "heartbeat_interval_seconds": 5 }),
        )
        .await,
        h.post_json(
            &format!("{base}/custom-message"),
            json!({ "capability": "io.example.echo", "type": "ping", "data": "hi" }),
        )
        .await,
    ];
    for (status, body) in checks {
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("capability"),
            "{body}"
        );
    }
    // Nothing was offered to the agent.
    let reply = h.poll(&agent.heartbeat()).await;
    assert!(reply.remote_config.is_none() && reply.command.is_none());
    assert!(reply.packages_available.is_none() && reply.connection_settings.is_none());
}

/// Precedence: the agent's own config wins over a group's, a group's over
/// the default; new and reconnecting agents get theirs without a click.
#[tokio::test]
async fn rcfg_config_precedence_agent_over_group_over_default() {
    let h = harness(|_| {}).await;
    let (status, _) = h
        .put("/api/config/default", "text/yaml", "default: 1")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let group = json!({
        "selector": { "service.name": "checkout" },
        "config": { "files": { "group.yaml": { "content_type": "text/yaml", "body": "group: 1" } } }
    });
    let (status, reply) = h
        .json(Method::PUT, "/api/config/groups/checkout", group)
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let group_config = config("group.yaml", "text/yaml", "group: 1");
    assert_eq!(
        reply["config_hash"],
        hex::encode(config_hash(&group_config))
    );
    let default_config = config("", "text/yaml", "default: 1");

    // A new agent of the group gets the group config in its first reply.
    let mut checkout = TestAgent::new(uid(4), "checkout", FULL_CAPABILITIES);
    let first = h.poll(&checkout.hello()).await;
    assert_eq!(
        first.remote_config.expect("group config").config,
        Some(group_config.clone())
    );
    // Any other agent gets the default.
    let mut cart = TestAgent::new(uid(5), "cart", FULL_CAPABILITIES);
    let first = h.poll(&cart.hello()).await;
    assert_eq!(
        first.remote_config.expect("default config").config,
        Some(default_config.clone())
    );

    // The agent's own config wins.
    let (status, _) = h
        .put(&agent_path(uid(4), "/config"), "text/plain", "mine")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let own = h.config_offer(&checkout.heartbeat()).await;
    assert_eq!(own.config, Some(config("", "text/plain", "mine")));
    let detail = h.detail(uid(4)).await;
    assert_eq!(detail["desired_config"]["source"]["kind"], "agent");

    // Removing it falls back to the group.
    let (status, reply) = h
        .request(Method::DELETE, &agent_path(uid(4), "/config"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        reply["config_hash"],
        hex::encode(config_hash(&group_config))
    );
    let back = h.config_offer(&checkout.heartbeat()).await;
    assert_eq!(back.config, Some(group_config.clone()));
    let detail = h.detail(uid(4)).await;
    assert_eq!(
        detail["desired_config"]["source"],
        json!({ "kind": "group", "name": "checkout" })
    );

    // Changing the default reaches the agents that use it, not the group's.
    h.put(
        "/api/config/default?file=base.yaml",
        "text/yaml",
        "default: 2",
    )
    .await;
    let changed = h.config_offer(&cart.heartbeat()).await;
    assert_eq!(
        changed.config,
        Some(config("base.yaml", "text/yaml", "default: 2"))
    );
    if let Some(offer) = h.poll(&checkout.heartbeat()).await.remote_config {
        // The registry may repeat the unacknowledged group offer; never the default.
        assert_eq!(offer.config, Some(group_config.clone()));
    }
    let detail = h.detail(uid(4)).await;
    assert_eq!(
        detail["desired_config"]["config_hash"],
        hex::encode(config_hash(&group_config))
    );

    let (_, fleet_config) = h.get("/api/config").await;
    let checkout_group = &fleet_config["groups"]["checkout"];
    assert_eq!(checkout_group["matching_agents"], 1);
    assert_eq!(checkout_group["selector"]["service.name"], "checkout");
    assert_eq!(
        fleet_config["default"]["files"]["base.yaml"]["body"],
        "default: 2"
    );

    // Bad groups are refused.
    let (status, _) = h
        .json(
            Method::PUT,
            "/api/config/groups/empty",
            json!({ "selector": {}, "config": { "files": { "a": { "body": "x" } } } }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h
        .json(
            Method::PUT,
            "/api/config/groups/x",
            json!({ "selector": 5 }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.request(Method::DELETE, "/api/config/groups/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// PKG-01/08/10/12: a package names a file the server serves, with its
/// SHA-256; the download route serves the same bytes.
#[tokio::test]
async fn pkg_offer_names_a_served_file_with_its_sha256() {
    let h = harness(|_| {}).await;
    let mut agent = TestAgent::new(uid(6), "cart", FULL_CAPABILITIES);
    h.poll(&agent.hello()).await;
    let packages = h.dir.path().join("packages");
    std::fs::create_dir_all(&packages).unwrap();
    let content = b"#!/bin/sh\necho new agent\n".repeat(100);
    std::fs::write(packages.join("agent-2.0.tar.gz"), &content).unwrap();
    let sha256 = Sha256::digest(&content);

    let (_, files) = h.get("/api/packages").await;
    assert_eq!(files[0]["file"], "agent-2.0.tar.gz");
    assert_eq!(files[0]["sha256"], hex::encode(sha256));

    let base = agent_path(uid(6), "/packages");
    let (status, reply) = h
        .post_json(
            &base,
            json!({ "file": "agent-2.0.tar.gz", "version": "2.0", "sha256": hex::encode(sha256) }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    let url = format!("{DOWNLOAD_BASE}/packages/agent-2.0.tar.gz");
    assert_eq!(reply["download_url"], url);

    let offer = h.packages_offer(&mut agent).await;
    assert_eq!(
        hex::encode(&offer.all_packages_hash),
        reply["all_packages_hash"]
    );
    let package = &offer.packages["agent-2.0"];
    assert_eq!(package.version, "2.0");
    assert!(!package.hash.is_empty());
    let file = package.file.as_ref().expect("file");
    assert_eq!(file.download_url, url);
    assert_eq!(file.content_hash.as_ref(), sha256.as_slice());

    let (status, body) = h.get("/packages/agent-2.0.tar.gz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_str().unwrap().as_bytes(), content.as_slice());

    let detail = h.detail(uid(6)).await;
    assert_eq!(
        detail["packages_offered"]["agent-2.0"]["sha256"],
        hex::encode(sha256)
    );

    // Wrong hash, missing file, sneaky names.
    let (status, _) = h
        .post_json(&base, json!({ "file": "agent-2.0.tar.gz", "sha256": "00" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.post_json(&base, json!({ "file": "missing.bin" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for name in ["../secret", ".hidden", "a/b", ""] {
        let (status, _) = h.post_json(&base, json!({ "file": name })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}");
    }
    let (status, _) = h
        .post_json(
            &base,
            json!({ "file": "agent-2.0.tar.gz", "type": "weird" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Withdrawing the package sends the smaller set.
    let (status, _) = h
        .request(Method::DELETE, &format!("{base}/agent-2.0"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let offer = h.packages_offer(&mut agent).await;
    assert!(offer.packages.is_empty());
}

#[tokio::test]
async fn pkg_multipart_upload_is_stored_and_offered() {
    let h = harness(|_| {}).await;
    let mut agent = TestAgent::new(uid(7), "cart", FULL_CAPABILITIES);
    h.poll(&agent.hello()).await;
    let boundary = "XBOUNDARYX";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nplugin\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\naddon\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"plugin.so\"\r\n\
         Content-Type: application/octet-stream\r\n\r\nPLUGIN-BYTES\r\n--{boundary}--\r\n"
    );
    let (status, reply) = h
        .call(
            Method::POST,
            &agent_path(uid(7), "/packages"),
            Some(&format!("multipart/form-data; boundary={boundary}")),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(
        reply["sha256"],
        hex::encode(Sha256::digest(b"PLUGIN-BYTES"))
    );
    assert_eq!(
        std::fs::read(h.dir.path().join("packages/plugin.so")).unwrap(),
        b"PLUGIN-BYTES"
    );
    let offer = h.packages_offer(&mut agent).await;
    assert_eq!(
        offer.packages["plugin"].r#type(),
        opamp_proto::PackageType::Addon
    );
}

/// HB-08, CS-13: a heartbeat interval goes out as OpAMP connection settings
/// with a non-empty destination endpoint.
#[tokio::test]
async fn hb_heartbeat_interval_is_offered_in_connection_settings() {
    let h = harness(|options| options.agent_token = Some("s3cret".into())).await;
    let mut agent = TestAgent::new(uid(8), "cart", FULL_CAPABILITIES);
    h.poll_with(&agent.hello(), Some("Bearer s3cret"))
        .await
        .expect("accepted");
    let (status, body) = h
        .json(
            Method::PUT,
            &agent_path(uid(8), "/heartbeat"),
            json!({ "heartbeat_interval_seconds": 7 }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let reply = h
        .poll_with(&agent.heartbeat(), Some("Bearer s3cret"))
        .await
        .expect("accepted");
    let opamp = reply
        .connection_settings
        .expect("settings")
        .opamp
        .expect("opamp settings");
    assert_eq!(opamp.heartbeat_interval_seconds, 7);
    assert_eq!(opamp.destination_endpoint, "http://127.0.0.1:4320/v1/opamp");
    let headers = opamp.headers.expect("auth header kept");
    assert_eq!(headers.headers[0].value, "Bearer s3cret");
    let detail = h.detail(uid(8)).await;
    assert_eq!(detail["heartbeat_interval_seconds"], 7);

    let (status, _) = h
        .json(
            Method::PUT,
            &agent_path(uid(8), "/heartbeat"),
            json!({ "heartbeat_interval_seconds": "soon" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// CONN-06: agents without the bearer token get 401.
#[tokio::test]
async fn conn_06_agents_without_the_token_get_401() {
    let h = harness(|options| options.agent_token = Some("s3cret".into())).await;
    let mut agent = TestAgent::new(uid(10), "cart", FULL_CAPABILITIES);
    assert_eq!(
        h.poll_with(&agent.hello(), None).await.unwrap_err(),
        StatusCode::UNAUTHORIZED
    );
    agent.sequence = 0;
    assert_eq!(
        h.poll_with(&agent.hello(), Some("Bearer wrong"))
            .await
            .unwrap_err(),
        StatusCode::UNAUTHORIZED
    );
    agent.sequence = 0;
    h.poll_with(&agent.hello(), Some("Bearer s3cret"))
        .await
        .expect("accepted with the token");
    let (_, list) = h.get("/api/agents").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn restart_custom_message_and_forget() {
    let h = harness(|_| {}).await;
    let mut agent = TestAgent::new(uid(11), "cart", FULL_CAPABILITIES);
    let mut hello = agent.hello();
    hello.custom_capabilities = Some(opamp_proto::CustomCapabilities {
        capabilities: vec!["io.example.echo".into()],
    });
    h.poll(&hello).await;
    let base = agent_path(uid(11), "");

    let (status, _) = h.request(Method::POST, &format!("{base}/restart")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let reply = h.poll(&agent.heartbeat()).await;
    assert_eq!(
        reply.command.expect("restart").r#type(),
        opamp_proto::CommandType::Restart
    );

    let (status, _) = h
        .post_json(
            &format!("{base}/custom-message"),
            json!({ "capability": "io.example.echo", "type": "ping", "data": "hello" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let message = h
        .poll(&agent.heartbeat())
        .await
        .custom_message
        .expect("custom message");
    assert_eq!(
        (message.r#type.as_str(), message.data.as_ref()),
        ("ping", b"hello".as_slice())
    );
    let (status, body) = h
        .post_json(
            &format!("{base}/custom-message"),
            json!({ "capability": "io.other", "type": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "custom_capability_not_announced");

    // No certificate authority configured.
    let (status, body) = h
        .request(Method::POST, &format!("{base}/rotate-certificate"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "no_client_ca");

    // A connected agent cannot be forgotten; after it says goodbye it can.
    let (status, _) = h.request(Method::DELETE, &base).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let mut goodbye = agent.heartbeat();
    goodbye.agent_disconnect = Some(Default::default());
    h.poll(&goodbye).await;
    let mut events = h.events().await;
    until(&mut events, "the agent to be offline", || async {
        let (_, detail) = h.get(&base).await;
        detail["connected"] == false
    })
    .await;
    let (status, _) = h.request(Method::DELETE, &base).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = h.get(&base).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The page's event stream announces agents as they change.
#[tokio::test]
async fn event_stream_announces_agent_changes() {
    let h = harness(|_| {}).await;
    let mut events = h.events().await;
    let mut agent = TestAgent::new(uid(12), "frontend", FULL_CAPABILITIES);
    h.poll(&agent.hello()).await;
    let found = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let (name, data) = events.next().await;
            if name == "agent" {
                let summary: serde_json::Value = serde_json::from_str(&data).expect("JSON");
                if summary["description"]["identifying"]["service.name"] == "frontend" {
                    return summary;
                }
            }
        }
    })
    .await
    .expect("an agent event");
    assert_eq!(found["instance_uid"], uid(12).to_string());
}

#[tokio::test]
async fn page_and_assets_are_served() {
    let h = harness(|_| {}).await;
    for (path, needle) in [
        ("/", "<title>OpAMP fleet</title>"),
        ("/assets/app.js", "EventSource"),
        ("/assets/style.css", ":root"),
    ] {
        let (status, body) = h.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(body.as_str().unwrap().contains(needle), "{path}");
    }
    let (status, _) = h.get("/assets/other.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, info) = h.get("/api/server").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["can_rotate_certificates"], false);
}

/// CS-25/30/36: rotation issues a certificate signed by the client CA for
/// the agent's uid and offers it with the CA certificate.
#[tokio::test]
async fn cs_rotate_certificate_offers_a_ca_signed_certificate() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fleet test CA");
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let ca =
        opamp_fleet_server::ClientCa::from_pem(&ca_cert.pem(), &ca_key.serialize_pem()).unwrap();
    let h = harness(|options| options.client_ca = Some(ca)).await;
    let mut agent = TestAgent::new(uid(13), "cart", FULL_CAPABILITIES);
    h.poll(&agent.hello()).await;

    let (status, body) = h
        .request(Method::POST, &agent_path(uid(13), "/rotate-certificate"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let settings = h
        .poll(&agent.heartbeat())
        .await
        .connection_settings
        .expect("settings");
    let certificate = settings
        .opamp
        .expect("opamp settings")
        .certificate
        .expect("certificate");
    assert_eq!(certificate.ca_cert.as_ref(), ca_cert.pem().as_bytes());
    assert!(
        std::str::from_utf8(&certificate.private_key)
            .unwrap()
            .contains("PRIVATE KEY")
    );
    // The issued certificate names the agent and verifies against the CA key.
    let (_, parsed) = x509_parser::pem::parse_x509_pem(&certificate.cert).unwrap();
    let cert = parsed.parse_x509().unwrap();
    assert!(cert.subject().to_string().contains(&uid(13).to_string()));
    let (_, ca_parsed) = x509_parser::pem::parse_x509_pem(ca_cert.pem().as_bytes()).unwrap();
    let ca_x509 = ca_parsed.parse_x509().unwrap();
    assert_eq!(cert.issuer(), ca_x509.subject());
    cert.verify_signature(Some(ca_x509.public_key()))
        .expect("signed by the CA");
}

/// CS-39: with an OTLP endpoint, agents that report their own telemetry
/// are offered destinations in their first reply (CS-01: only the classes
/// they declared).
#[tokio::test]
async fn cs_39_own_telemetry_destinations_are_offered_on_connect() {
    let h = harness(|options| options.otlp_endpoint = Some("http://otlp.test:4318/".into())).await;
    let mut metrics_only = TestAgent::new(
        uid(14),
        "cart",
        AgentCapabilities::REPORTS_STATUS | AgentCapabilities::REPORTS_OWN_METRICS,
    );
    let first = h.poll(&metrics_only.hello()).await;
    let reply = match first.connection_settings {
        Some(settings) => settings,
        // Offered right after the first reply: it goes out with the next poll.
        None => h
            .poll(&metrics_only.heartbeat())
            .await
            .connection_settings
            .expect("offered"),
    };
    assert_eq!(
        reply
            .own_metrics
            .expect("metrics destination")
            .destination_endpoint,
        "http://otlp.test:4318/v1/metrics"
    );
    assert!(reply.own_traces.is_none() && reply.own_logs.is_none() && reply.opamp.is_none());

    let mut plain = TestAgent::new(uid(15), "cart", AgentCapabilities::REPORTS_STATUS);
    assert!(h.poll(&plain.hello()).await.connection_settings.is_none());
    assert!(
        h.poll(&plain.heartbeat())
            .await
            .connection_settings
            .is_none()
    );
}

#[tokio::test]
async fn commands_for_disconnected_agents_are_409() {
    let h = harness(|_| {}).await;
    let mut agent = TestAgent::new(uid(16), "cart", FULL_CAPABILITIES);
    h.poll(&agent.hello()).await;
    let mut goodbye = agent.heartbeat();
    goodbye.agent_disconnect = Some(Default::default());
    h.poll(&goodbye).await;
    let mut events = h.events().await;
    let base = agent_path(uid(16), "");
    until(&mut events, "the agent to be offline", || async {
        h.get(&base).await.1["connected"] == false
    })
    .await;
    let (status, body) = h.request(Method::POST, &format!("{base}/restart")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "not_connected");
    // A config is kept for when it comes back.
    let (status, reply) = h
        .put(&format!("{base}/config"), "text/yaml", "later: true")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    agent.sequence = 0;
    let back = h.config_offer(&agent.hello()).await;
    assert_eq!(
        hex::encode(back.config_hash),
        reply["config_hash"].as_str().unwrap()
    );
}

// ---- the agent list at fleet size: server-side paging and filters ----

/// The uids of a page, in order.
fn page_uids(page: &serde_json::Value) -> Vec<String> {
    page["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("a page: {page}"))
        .iter()
        .map(|agent| agent["instance_uid"].as_str().expect("uid").to_owned())
        .collect()
}

fn uid_strings(numbers: impl IntoIterator<Item = u8>) -> Vec<String> {
    numbers.into_iter().map(|n| uid(n).to_string()).collect()
}

#[tokio::test]
async fn agent_list_pages_in_uid_order_and_the_cursor_survives_inserts() {
    let h = harness(|_| {}).await;
    // Arrival order is not list order.
    for n in (10..35).rev() {
        h.poll(&TestAgent::new(uid(n), "checkout", FULL_CAPABILITIES).hello())
            .await;
    }
    let (status, first) = h.get("/api/agents?limit=10").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(page_uids(&first), uid_strings(10..20));
    assert_eq!(first["limit"], 10);
    assert_eq!(first["counts"]["total"], 25);
    let cursor = first["next"].as_str().expect("a next cursor").to_owned();

    // Agents arrive while a client pages: one sorting before the cursor,
    // one after it. The next pages neither repeat nor skip an agent.
    h.poll(&TestAgent::new(uid(5), "checkout", FULL_CAPABILITIES).hello())
        .await;
    h.poll(&TestAgent::new(uid(40), "checkout", FULL_CAPABILITIES).hello())
        .await;
    let (status, second) = h
        .get(&format!("/api/agents?limit=10&cursor={cursor}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(page_uids(&second), uid_strings(20..30));
    assert_eq!(
        second["counts"]["total"], 27,
        "counts cover the whole match"
    );
    let cursor = second["next"].as_str().expect("a next cursor");
    let (_, third) = h
        .get(&format!("/api/agents?limit=10&cursor={cursor}"))
        .await;
    assert_eq!(
        page_uids(&third),
        uid_strings((30..35).chain([40])),
        "the agent inserted after the cursor is on a later page"
    );
    assert!(third["next"].is_null(), "last page: {third}");

    // The same cursor gives the same page again.
    let (_, again) = h
        .get(&format!("/api/agents?limit=10&cursor={cursor}"))
        .await;
    assert_eq!(page_uids(&again), page_uids(&third));
    // A fresh first page starts with the agent that sorted before the cursor.
    let (_, fresh) = h.get("/api/agents?limit=2").await;
    assert_eq!(page_uids(&fresh), uid_strings([5, 10]));
    // A page exactly as long as what is left has no next cursor.
    let (_, exact) = h.get("/api/agents?limit=27").await;
    assert_eq!(exact["agents"].as_array().unwrap().len(), 27);
    assert!(exact["next"].is_null());
}

#[tokio::test]
async fn agent_list_limits_and_bad_parameters_are_typed_errors() {
    let h = harness(|_| {}).await;
    for n in 1..=3 {
        h.poll(&TestAgent::new(uid(n), "checkout", FULL_CAPABILITIES).hello())
            .await;
    }
    // Without parameters: the original array of every agent.
    let (status, legacy) = h.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(legacy.as_array().expect("array").len(), 3);
    // Any parameter selects the page; the default limit is 100.
    let (status, page) = h.get("/api/agents?q=").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["limit"], 100);
    assert_eq!(page_uids(&page), uid_strings(1..=3));
    let (status, page) = h.get("/api/agents?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["limit"], 1000);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "connection=maybe",
        "config=done",
        "health=ok",
        "attribute=service.name",
        "attribute==checkout",
        "colour=red",
    ] {
        let (status, body) = h.get(&format!("/api/agents?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request", "{bad}: {body}");
    }
    // A cursor this server did not hand out: its own error code.
    for cursor in ["garbage!", "AAAA", "AgEBAQEBAQEBAQEBAQEBAQE"] {
        let (status, body) = h.get(&format!("/api/agents?cursor={cursor}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{cursor}: {body}");
        assert_eq!(body["error"], "bad_cursor", "{cursor}: {body}");
    }
}

#[tokio::test]
async fn agent_list_filters_by_connection_config_health_attribute_and_text() {
    let h = harness(|_| {}).await;
    // 1: checkout, healthy, config applied.
    let mut one = TestAgent::new(uid(1), "checkout", FULL_CAPABILITIES);
    h.poll(&one.hello()).await;
    // 2: payments, unhealthy, config failed.
    let mut two = TestAgent::new(uid(2), "payments", FULL_CAPABILITIES);
    let mut hello = two.hello();
    hello.health.as_mut().unwrap().healthy = false;
    h.poll(&hello).await;
    // 3: checkout, no health reported, config pending.
    let mut three = TestAgent::new(uid(3), "checkout", FULL_CAPABILITIES);
    let mut hello = three.hello();
    hello.health = None;
    h.poll(&hello).await;
    // 4: frontend, healthy, no config, then gone.
    let mut four = TestAgent::new(uid(4), "frontend", FULL_CAPABILITIES);
    h.poll(&four.hello()).await;

    for (agent, body) in [
        (&mut one, "good: 1"),
        (&mut two, "bad"),
        (&mut three, "x: 3"),
    ] {
        let (status, _) = h
            .put(
                &agent_path(agent.uid, "/config?file=c.yaml"),
                "text/yaml",
                body,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let offer = h.config_offer(&agent.heartbeat()).await;
        let outcome = match agent.uid {
            u if u == uid(1) => Some(RemoteConfigStatuses::Applied),
            u if u == uid(2) => Some(RemoteConfigStatuses::Failed),
            _ => None,
        };
        if let Some(outcome) = outcome {
            h.poll(&agent.report(&offer.config_hash, outcome, offer.config.clone()))
                .await;
        }
    }
    let mut goodbye = four.heartbeat();
    goodbye.agent_disconnect = Some(Default::default());
    h.poll(&goodbye).await;
    let mut events = h.events().await;
    until(&mut events, "agent 4 to be offline", || async {
        let (_, page) = h.get("/api/agents?connection=disconnected").await;
        page_uids(&page) == uid_strings([4])
    })
    .await;

    let (_, all) = h.get("/api/agents?limit=100").await;
    assert_eq!(
        all["counts"],
        json!({
            "total": 4, "connected": 3, "disconnected": 1,
            "config": { "none": 1, "pending": 1, "applying": 0, "applied": 1, "failed": 1 },
            "health": { "healthy": 2, "unhealthy": 1, "unknown": 1 },
        })
    );
    let cases: [(&str, &[u8]); 14] = [
        ("connection=connected", &[1, 2, 3]),
        ("connection=disconnected", &[4]),
        ("config=applied", &[1]),
        ("config=failed", &[2]),
        ("config=pending", &[3]),
        ("config=none", &[4]),
        ("health=healthy", &[1, 4]),
        ("health=unhealthy", &[2]),
        ("health=unknown", &[3]),
        ("attribute=service.name%3Dcheckout", &[1, 3]),
        ("attribute=host.name%3Dtest-host", &[1, 2, 3, 4]),
        ("q=CHECK", &[1, 3]),
        ("q=paym", &[2]),
        ("attribute=service.name%3Dcheckout&health=healthy", &[1]),
    ];
    for (filter, expected) in cases {
        let (status, page) = h.get(&format!("/api/agents?{filter}")).await;
        assert_eq!(status, StatusCode::OK, "{filter}: {page}");
        assert_eq!(
            page_uids(&page),
            uid_strings(expected.iter().copied()),
            "{filter}"
        );
        assert_eq!(page["counts"]["total"], expected.len(), "{filter}");
    }
    // Text search also finds a uid, and the counts follow the filter.
    let (_, by_uid) = h.get(&format!("/api/agents?q={}", uid(2))).await;
    assert_eq!(page_uids(&by_uid), uid_strings([2]));
    assert_eq!(by_uid["counts"]["health"]["unhealthy"], 1);
    assert_eq!(by_uid["counts"]["health"]["healthy"], 0);
    assert_eq!(by_uid["counts"]["config"]["failed"], 1);
    // Paging within a filter.
    let (_, first) = h.get("/api/agents?connection=connected&limit=2").await;
    assert_eq!(page_uids(&first), uid_strings([1, 2]));
    let cursor = first["next"].as_str().expect("next");
    let (_, rest) = h
        .get(&format!(
            "/api/agents?connection=connected&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(page_uids(&rest), uid_strings([3]));
    assert!(rest["next"].is_null());
}
