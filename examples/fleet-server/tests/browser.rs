//! A real browser against the `server` binary: open the agent list, open an
//! agent, see the keys and roles of a two-key config as tabs, push a config
//! with a role from the page and see APPLIED.
//!
//! Needs Debian's `chromium` and `chromedriver` (package `chromium-driver`)
//! on PATH. Without them the test fails when `CI=true` and is skipped with a
//! notice otherwise. Set `OPAMP_SCREENSHOT_DIR` to keep screenshots.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use opamp_proto::{AgentConfigMap, AgentConfigObject, config_hash};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The browser and its driver, or `None` when the test should be skipped.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = on_path(&["chromium", "chromium-browser"]);
    let driver = on_path(&["chromedriver"]);
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        (chromium, driver) => {
            let missing = [
                ("chromium", chromium.is_none()),
                ("chromedriver", driver.is_none()),
            ]
            .iter()
            .filter(|(_, missing)| *missing)
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(" and ");
            if std::env::var("CI").is_ok_and(|value| value == "true") {
                panic!(
                    "{missing} not on PATH: CI must install them (apt-get install -y chromium chromium-driver)"
                );
            }
            // Straight to stderr: the test harness captures eprintln!.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED browser test: {missing} not on PATH (apt-get install chromium chromium-driver to run it)"
            );
            None
        }
    }
}

/// Starts a process and returns it with the first stdout line containing
/// `marker`.
async fn spawn_until(mut command: Command, marker: &str) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("process starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read")
                .expect("process printed its address");
            if line.contains(marker) {
                return line;
            }
        }
    })
    .await
    .expect("process announced itself");
    // Keep draining stdout so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, line)
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

fn is_stale(error: &fantoccini::error::CmdError) -> bool {
    matches!(
        error,
        fantoccini::error::CmdError::Standard(error)
            if error.error == fantoccini::error::ErrorStatus::StaleElementReference
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_pushes_a_config_and_sees_applied() {
    let Some((chromium, chromedriver)) = browser() else {
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
    let (_server, web_line) = spawn_until(server_command, "Web page").await;
    let web = web_line
        .split_whitespace()
        .last()
        .expect("web URL")
        .trim_end_matches('/')
        .to_owned();

    let mut driver_command = Command::new(&chromedriver);
    driver_command.arg("--port=0");
    let (_driver, driver_line) = spawn_until(driver_command, "started successfully on port").await;
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
        browser
            .execute_async(
                WAIT_FOR_TEXT,
                vec![
                    json!("#detail-view [data-field=\"health\"]"),
                    json!("healthy"),
                ],
            )
            .await?;

        // The group's two keys are tabs of one configuration: "" under a
        // readable label, with its role; switching shows the other key.
        for needle in ["(empty key)", "role expanded", "env:EXPORTERS"] {
            browser
                .execute_async(
                    WAIT_FOR_TEXT,
                    vec![
                        json!("#detail-view [data-field=\"effective\"]"),
                        json!(needle),
                    ],
                )
                .await?;
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
        browser
            .execute_async(
                WAIT_FOR_TEXT,
                vec![
                    json!("#detail-view [data-field=\"push-status\"]"),
                    json!(short),
                ],
            )
            .await?;
        browser
            .execute_async(
                WAIT_FOR_TEXT,
                vec![
                    json!("#detail-view [data-field=\"push-status\"]"),
                    json!("APPLIED"),
                ],
            )
            .await?;
        // The effective config the agent reports is the pushed one, role
        // included, and a single key needs no tabs.
        for needle in ["pushed from the browser", "role main"] {
            browser
                .execute_async(
                    WAIT_FOR_TEXT,
                    vec![
                        json!("#detail-view [data-field=\"effective\"]"),
                        json!(needle),
                    ],
                )
                .await?;
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
