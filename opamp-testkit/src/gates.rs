//! Gates for tests that need a tool from outside Rust: skip with a notice
//! locally, fail when `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Whether the tests run in CI: the environment variable `CI` is set and
/// is not empty, `0` or `false`. CI must never skip a test silently.
pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| {
        let value = value.trim();
        !value.is_empty() && value != "0" && !value.eq_ignore_ascii_case("false")
    })
}

/// Turns a missing tool into the gate's answer: `None` after a notice on
/// stderr, or a panic with `reason` in CI.
///
/// `what` names the tests ("the opamp-go interop tests"), `reason` says
/// what is missing and how to get it.
pub fn skip_or_fail<T>(what: &str, reason: &str) -> Option<T> {
    if running_in_ci() {
        panic!("{what} cannot run, and CI is set so they fail instead of skipping: {reason}");
    }
    eprintln!("NOTICE: skipping {what} (set CI=true to make this fatal): {reason}");
    None
}

/// The first of `names` found on `PATH`.
pub fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The `go` program, or `None` (after a notice; a panic in CI) when it is
/// not on `PATH`.
pub fn go() -> Option<PathBuf> {
    match on_path(&["go"]) {
        Some(go) => Some(go),
        None => skip_or_fail(
            "a test that needs Go",
            "`go` is not on PATH; install Go 1.24 or newer",
        ),
    }
}

/// Chromium and chromedriver (`(browser, driver)`), or `None` (after a
/// notice; a panic in CI) when either is not on `PATH`.
pub fn chromium() -> Option<(PathBuf, PathBuf)> {
    let browser = on_path(&["chromium", "chromium-browser"]);
    let driver = on_path(&["chromedriver"]);
    match (browser, driver) {
        (Some(browser), Some(driver)) => Some((browser, driver)),
        (browser, driver) => {
            let missing: Vec<&str> = [
                ("chromium", browser.is_none()),
                ("chromedriver", driver.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, missing)| missing.then_some(name))
            .collect();
            skip_or_fail(
                "a browser test",
                &format!(
                    "{} not on PATH (apt-get install -y chromium chromium-driver)",
                    missing.join(" and ")
                ),
            )
        }
    }
}

/// The URL of a PostgreSQL server to test against, or `None` (after a
/// notice; a panic in CI) when there is none.
///
/// `OPAMP_TEST_DATABASE_URL` names one (`.ci/run` starts one). Without it,
/// the first call starts a throw-away cluster with `.ci/postgres.sh`,
/// stopped when the test process exits. Decided once per process.
pub fn postgres_url() -> Option<String> {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    match SERVER.get_or_init(start_postgres) {
        Ok(url) => Some(url.clone()),
        Err(reason) => skip_or_fail("the PostgreSQL tests", reason),
    }
}

fn start_postgres() -> Result<String, String> {
    if let Ok(url) = std::env::var("OPAMP_TEST_DATABASE_URL") {
        return Ok(url);
    }
    let dir = std::env::temp_dir().join(format!("opamp-pg-test-{}", std::process::id()));
    start_postgres_cluster(&dir).map_err(|failure| {
        format!(
            "no OPAMP_TEST_DATABASE_URL and no cluster could be started ({})",
            failure.trim()
        )
    })
}

/// Starts a throw-away PostgreSQL cluster in `dir` with `.ci/postgres.sh`,
/// stopped when this process exits: its URL, or why there is none.
pub fn start_postgres_cluster(dir: &Path) -> Result<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/postgres.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg("start")
        .arg(dir)
        .arg(std::process::id().to_string())
        .output();
    Err(match output {
        Ok(output) if output.status.success() => {
            let stdout = String::from_utf8_lossy(&output.stdout);
            if let Some(url) = stdout
                .lines()
                .find_map(|line| line.strip_prefix("OPAMP_TEST_DATABASE_URL="))
            {
                return Ok(url.to_owned());
            }
            format!("postgres.sh printed no URL: {stdout}")
        }
        Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
        Err(error) => error.to_string(),
    })
}

/// A new, empty database of its own on the [`postgres_url`] server (named
/// after `label`, the process and a counter), or `None` when there is no
/// server.
#[cfg(feature = "postgres")]
pub async fn fresh_database(label: &str) -> Option<tokio_postgres::Config> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static DATABASES: AtomicU32 = AtomicU32::new(0);
    let url = postgres_url()?;
    let admin: tokio_postgres::Config = url.parse().expect("OPAMP_TEST_DATABASE_URL parses");
    let (client, connection) = admin
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    let driver = tokio::spawn(connection);
    let name = format!(
        "opamp_test_{label}_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    drop(client);
    let _ = driver.await;
    let mut config = admin;
    config.dbname(&name);
    Some(config)
}

/// Like [`fresh_database`], as a URL, for programs the test runs as
/// processes.
#[cfg(feature = "postgres")]
pub async fn fresh_database_url(label: &str) -> Option<String> {
    let config = fresh_database(label).await?;
    let name = config.get_dbname().expect("a database name");
    Some(with_database(&postgres_url()?, name))
}

/// The database URL `server` with its database path replaced by `name`.
pub fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let scheme_end = base.find("://").expect("a URL") + 3;
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |slash| scheme_end + slash);
    let mut url = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}
