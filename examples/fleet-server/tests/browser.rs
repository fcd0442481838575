//! A real browser against the `server` binary: open the agent list, open an
//! agent, see the keys and roles of a two-key config as tabs, push a config
//! with a role from the page and see APPLIED.
//!
//! Needs Debian's `chromium` and `chromedriver` (package `chromium-driver`)
//! on PATH. Without them the test fails when `CI=true` and is skipped with a
//! notice otherwise. Set `OPAMP_SCREENSHOT_DIR` to keep screenshots.

use std::path::Path;
use std::time::Duration;

use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use opamp_proto::{AgentConfigMap, AgentConfigObject, config_hash};
use opamp_testkit::ChildProcess;
use serde_json::json;
use tokio::process::Command;

/// Picks the option with `value` in the `<select>` at `css`.
async fn select(
    browser: &fantoccini::Client,
    css: &str,
    value: &str,
) -> Result<(), fantoccini::error::CmdError> {
    browser
        .find(Locator::Css(css))
        .await?
        .select_by_value(value)
        .await?;
    Ok(())
}

/// Starts a process and returns it with the first output line containing
/// `marker`.
async fn spawn_until(name: &str, command: Command, marker: &str) -> (ChildProcess, String) {
    let mut process = ChildProcess::spawn(name, command);
    let line = process
        .wait_for_line(marker, |line| line.contains(marker))
        .await;
    (process, line)
}

fn save_screenshot(png: &[u8], name: &str) {
    if let Some(dir) = std::env::var_os("OPAMP_SCREENSHOT_DIR") {
        let path = Path::new(&dir).join(name);
        if let Err(error) = std::fs::write(&path, png) {
            eprintln!("cannot save {}: {error}", path.display());
        }
    }
}

/// Puts a group config with two keys, "" (with a role) and `collector.yaml`,
/// for the demo agent's service, through the page's own origin.
const PUT_TWO_KEY_GROUP: &str = r#"
const [done] = arguments;
const body = {
  selector: { 'service.name': 'checkout' },
  config: { files: {
    '': { content_type: 'text/yaml', role: 'expanded', body: 'exporters:\n  debug: {}\n' },
    'collector.yaml': { content_type: 'text/yaml', body: 'exporters: ${env:EXPORTERS}\n' },
  } },
};
fetch('/api/config/groups/two-views', {
  method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
}).then((response) => done(response.status), (error) => done(String(error)));
"#;

/// The key of the effective config's visible tab panel, and how many tabs.
const VISIBLE_TAB: &str = r#"
const root = document.querySelector('#detail-view [data-field="effective"]');
const panel = root && root.querySelector('[role="tabpanel"]:not([hidden])');
return [panel ? panel.dataset.key : null, root ? root.querySelectorAll('[role="tab"]').length : 0];
"#;

/// Resolves once `selector`'s text contains `needle`, watching the DOM
/// instead of polling.
const WAIT_FOR_TEXT: &str = r#"
const [selector, needle, done] = arguments;
const found = () => {
  const node = document.querySelector(selector);
  return node !== null && node.textContent.includes(needle);
};
if (found()) { done(true); return; }
const observer = new MutationObserver(() => {
  if (found()) { observer.disconnect(); done(true); }
});
observer.observe(document.body, { subtree: true, childList: true, characterData: true });
"#;

/// Waits until the detail view's `field` shows `text`.
async fn wait_for_field_text(
    browser: &fantoccini::Client,
    field: &str,
    text: &str,
) -> Result<(), fantoccini::error::CmdError> {
    let selector = format!("#detail-view [data-field=\"{field}\"]");
    browser
        .execute_async(WAIT_FOR_TEXT, vec![json!(selector), json!(text)])
        .await?;
    Ok(())
}

/// Waits until the JavaScript expression `condition` holds on the page.
async fn wait_until(
    browser: &fantoccini::Client,
    condition: &str,
) -> Result<(), fantoccini::error::CmdError> {
    browser
        .execute_async(WAIT_UNTIL, vec![json!(condition)])
        .await?;
    Ok(())
}

fn is_stale(error: &fantoccini::error::CmdError) -> bool {
    matches!(
        error,
        fantoccini::error::CmdError::Standard(error)
            if error.error == fantoccini::error::ErrorStatus::StaleElementReference
    )
}

/// Starts chromedriver and a headless Chromium session (60 s timeouts).
/// Keep the returned driver process and profile directory alive.
async fn open_browser(
    chromium: &Path,
    chromedriver: &Path,
) -> (ChildProcess, tempfile::TempDir, fantoccini::Client) {
    let mut driver_command = Command::new(chromedriver);
    driver_command.arg("--port=0");
    let (driver, driver_line) = spawn_until(
        "chromedriver",
        driver_command,
        "started successfully on port",
    )
    .await;
    let port: u16 = driver_line
        .trim_end_matches('.')
        .rsplit(' ')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("chromedriver port");

    let profile = tempfile::tempdir().expect("profile dir");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1800",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("WebDriver session");
    browser
        .update_timeouts(TimeoutConfiguration::new(
            Some(Duration::from_secs(60)),
            Some(Duration::from_secs(60)),
            None,
        ))
        .await
        .expect("timeouts");
    (driver, profile, browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_pushes_a_config_and_sees_applied() {
    let Some((chromium, chromedriver)) = opamp_testkit::chromium() else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");

    let mut server_command = Command::new(env!("CARGO_BIN_EXE_opamp-fleet-server"));
    server_command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
            "--store",
            "memory",
        ])
        .args(["--demo", "1", "--data-dir"])
        .arg(data.path())
        .env("RUST_LOG", "warn");
    let (_server, web_line) = spawn_until("fleet server", server_command, "Web page").await;
    let web = web_line
        .split_whitespace()
        .last()
        .expect("web URL")
        .trim_end_matches('/')
        .to_owned();

    let (_driver, _profile, browser) = open_browser(&chromium, &chromedriver).await;

    let result = async {
        // The list shows the demo agent; open it.
        browser.goto(&format!("{web}/")).await?;
        browser
            .wait()
            .at_most(Duration::from_secs(60))
            .for_element(Locator::Css("#agent-rows a"))
            .await?;
        save_screenshot(&browser.screenshot().await?, "list.png");
        let status = browser.execute_async(PUT_TWO_KEY_GROUP, vec![]).await?;
        assert_eq!(status, json!(200), "group PUT");
        // Live updates re-render the rows, so a found link may be replaced
        // before the click lands: find it again then.
        let mut attempts = 0;
        loop {
            let link = browser.find(Locator::Css("#agent-rows a")).await?;
            match link.click().await {
                Err(error) if is_stale(&error) && attempts < 10 => attempts += 1,
                other => break other?,
            }
        }

        // The detail view starts the editor from the agent's effective config.
        wait_for_field_text(&browser, "health", "healthy").await?;

        // The group's two keys are tabs of one configuration: "" under a
        // readable label, with its role; switching shows the other key.
        for needle in ["(empty key)", "role expanded", "env:EXPORTERS"] {
            wait_for_field_text(&browser, "effective", needle).await?;
        }
        assert_eq!(
            browser.execute(VISIBLE_TAB, vec![]).await?,
            json!(["", 2]),
            "the first key is shown first"
        );
        let mut attempts = 0;
        loop {
            let tab = browser
                .find(Locator::Css(
                    "#detail-view [data-field=\"effective\"] [role=\"tab\"][data-key=\"collector.yaml\"]",
                ))
                .await?;
            match tab.click().await {
                Err(error) if is_stale(&error) && attempts < 10 => attempts += 1,
                other => break other?,
            }
        }
        // The chosen tab's panel is the one shown (the page also keeps the
        // choice when it re-renders the view).
        assert_eq!(
            browser.execute(VISIBLE_TAB, vec![]).await?,
            json!(["collector.yaml", 2])
        );
        save_screenshot(&browser.screenshot().await?, "two-keys.png");
        let form = browser
            .find(Locator::Css("#detail-view form[data-form=\"config\"]"))
            .await?;
        let file = form.find(Locator::Css("input[name=\"file\"]")).await?;
        file.clear().await?;
        file.send_keys("collector.yaml").await?;
        let role = form.find(Locator::Css("input[name=\"role\"]")).await?;
        role.clear().await?;
        role.send_keys("main").await?;
        let body = "receivers:\n  otlp: {}\nexporters:\n  debug: {}\n# pushed from the browser\n";
        let editor = form.find(Locator::Css("textarea[name=\"body\"]")).await?;
        editor.clear().await?;
        editor.send_keys(body).await?;
        form.find(Locator::Css("button[type=\"submit\"]"))
            .await?
            .click()
            .await?;

        // The push status shows the pushed config's hash, then APPLIED.
        let mut pushed = AgentConfigMap::default();
        pushed.config_map.insert(
            "collector.yaml".into(),
            AgentConfigObject {
                body: body.as_bytes().to_vec().into(),
                content_type: "text/yaml".into(),
                role: "main".into(),
            },
        );
        let short = hex::encode(config_hash(&pushed))[..12].to_owned();
        wait_for_field_text(&browser, "push-status", &short).await?;
        wait_for_field_text(&browser, "push-status", "APPLIED").await?;
        // The effective config the agent reports is the pushed one, role
        // included, and a single key needs no tabs.
        for needle in ["pushed from the browser", "role main"] {
            wait_for_field_text(&browser, "effective", needle).await?;
        }
        assert_eq!(
            browser.execute(VISIBLE_TAB, vec![]).await?,
            json!([null, 0])
        );
        let status = browser
            .find(Locator::Css("#detail-view [data-field=\"push-status\"]"))
            .await?
            .text()
            .await?;
        save_screenshot(&browser.screenshot().await?, "detail.png");
        Ok::<_, fantoccini::error::CmdError>(status)
    }
    .await;
    let closed = browser.close().await;
    let status = result.expect("browser steps");
    assert!(status.contains("APPLIED"), "push status: {status}");
    closed.expect("session closed");
}

/// Resolves once the JavaScript expression is true (checked every 50 ms,
/// bounded by the session's 60 s script timeout).
const WAIT_UNTIL: &str = r#"
const [expression, done] = arguments;
const check = new Function(`return (${expression});`);
const tick = () => {
  let ok = false;
  try { ok = Boolean(check()); } catch (error) { ok = false; }
  if (ok) done(true); else setTimeout(tick, 50);
};
tick();
"#;

/// The list's counts (`data-count` → number as shown), the rows' uids and
/// health cells, and the pager text.
const LIST_STATE: &str = r#"
const counts = {};
for (const item of document.querySelectorAll('#counts [data-count]')) {
  counts[item.dataset.count] = item.querySelector('b').textContent;
}
const rows = [...document.querySelectorAll('#agent-rows tr')];
return {
  counts,
  uids: rows.map((row) => row.dataset.uid),
  health: [...new Set(rows.map((row) => row.children[3].textContent))],
  pager: document.querySelector('#page-info').textContent,
  no_match: !document.querySelector('#no-match').hidden,
};
"#;

mod fleet_seed;

/// An OpAMP hello over plain HTTP, straight into the app.
async fn plain_http_hello(app: &axum::Router, uid: opamp_proto::InstanceUid) {
    use opamp_proto::Message as _;
    use tower::ServiceExt as _;
    let hello = opamp_proto::AgentToServer {
        instance_uid: uid.to_bytes(),
        capabilities: opamp_proto::AgentCapabilities::REPORTS_STATUS.bits(),
        agent_description: Some(opamp_proto::AgentDescription::for_service("live", "1.0.0")),
        ..Default::default()
    };
    let request = http::Request::post("/v1/opamp")
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(axum::body::Body::from(hello.encode_to_vec()))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), http::StatusCode::OK);
}

/// The page at fleet size: 10,000 agents in the store plus three connected
/// over plain HTTP. The page shows one page of rows and the fleet's counts,
/// pages forward with the server's cursor, and filters on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_pages_and_filters_ten_thousand_agents() {
    const SEEDED: u32 = 10_000;
    let Some((chromium, chromedriver)) = opamp_testkit::chromium() else {
        return;
    };
    let store = opamp_fleet_server::FleetStore::in_memory().expect("memory store");
    fleet_seed::seed_fleet(&store, SEEDED).await;
    let fleet =
        opamp_fleet_server::FleetServer::new(store, opamp_fleet_server::FleetOptions::default());
    let app = fleet
        .api_router()
        .route_service("/v1/opamp", fleet.opamp_builder().build());
    for n in 1..=3u8 {
        let mut bytes = [0x03u8; 16];
        bytes[15] = n;
        bytes[6] = 0x70;
        bytes[8] = 0x80;
        plain_http_hello(&app, opamp_proto::InstanceUid::from_array(bytes)).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let web = format!("http://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn({
        let app = app.clone();
        async move { axum::serve(listener, app).await }
    });

    let (_driver, _profile, browser) = open_browser(&chromium, &chromedriver).await;
    let uid_of = |index: u32| json!(fleet_seed::seeded_uid(index).to_string());
    let result = async {
        browser.goto(&format!("{web}/")).await?;
        wait_until(&browser, "document.querySelectorAll('#agent-rows tr').length > 0 && document.querySelector('#counts [data-count]')").await?;
        let state = browser.execute(LIST_STATE, vec![]).await?;
        save_screenshot(&browser.screenshot().await?, "fleet-list.png");
        assert_eq!(
            state["counts"],
            json!({
                "total": "10,003", "connected": "3", "disconnected": "10,000",
                "applied": "2,500", "applying": "0", "pending": "2,500", "failed": "2,500",
                "healthy": "8,000", "unhealthy": "1,000",
            }),
            "{state}"
        );
        assert_eq!(state["uids"].as_array().unwrap().len(), 100, "one page of rows");
        assert_eq!(state["uids"][0], uid_of(0));
        assert_eq!(state["uids"][99], uid_of(99));
        assert_eq!(state["pager"], "1–100 of 10,003");

        // Next page: the server's cursor, the next hundred in uid order.
        browser.find(Locator::Css("#page-next")).await?.click().await?;
        wait_until(&browser, "document.querySelector('#page-info').textContent.startsWith('101–200')").await?;
        let state = browser.execute(LIST_STATE, vec![]).await?;
        assert_eq!(state["uids"][0], uid_of(100));
        assert_eq!(state["uids"].as_array().unwrap().len(), 100);

        // Health filter: back to the first page of the unhealthy agents.
        select(&browser, "#filter-health", "unhealthy").await?;
        wait_until(&browser, "document.querySelector('#page-info').textContent === '1–100 of 1,000'").await?;
        let state = browser.execute(LIST_STATE, vec![]).await?;
        assert_eq!(state["health"], json!(["unhealthy"]), "{state}");
        assert_eq!(state["counts"]["total"], "1,000");
        assert_eq!(state["counts"]["healthy"], "0");
        assert_eq!(state["uids"][1], uid_of(10));

        // Text search on top: host-00040 is unhealthy, host-00042 is not.
        let search = browser.find(Locator::Css("#filter")).await?;
        search.send_keys("host-00040").await?;
        wait_until(&browser, "document.querySelector('#counts [data-count=total]').textContent === '1 agent'").await?;
        let state = browser.execute(LIST_STATE, vec![]).await?;
        assert_eq!(state["uids"], json!([uid_of(40)]));
        search.clear().await?;
        search.send_keys("host-00042").await?;
        wait_until(&browser, "!document.querySelector('#no-match').hidden").await?;
        let state = browser.execute(LIST_STATE, vec![]).await?;
        assert_eq!(state["uids"], json!([]));

        // Attribute filter alone: one service in five.
        search.clear().await?;
        select(&browser, "#filter-health", "").await?;
        browser
            .find(Locator::Css("#filter-attribute"))
            .await?
            .send_keys("service.name=payments")
            .await?;
        wait_until(&browser, "document.querySelector('#page-info').textContent === '1–100 of 2,000'").await?;
        let state = browser.execute(LIST_STATE, vec![]).await?;
        assert_eq!(state["uids"][0], uid_of(1));
        assert_eq!(state["uids"][1], uid_of(6));
        save_screenshot(&browser.screenshot().await?, "fleet-filtered.png");
        Ok::<_, fantoccini::error::CmdError>(())
    }
    .await;
    let closed = browser.close().await;
    result.expect("browser steps");
    closed.expect("session closed");
    fleet.stop().await;
    server.abort();
}
