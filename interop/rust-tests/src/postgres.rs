//! A PostgreSQL server for the tests that need one.

/// The URL of the PostgreSQL server for tests: `OPAMP_TEST_DATABASE_URL`,
/// else a throw-away cluster started for this test process with
/// `.ci/postgres.sh` (stopped when the process exits). `None`, after a
/// notice naming `test`, when neither is available; with `CI=true` that is
/// a failure instead.
pub fn test_database_server(test: &str) -> Option<String> {
    if let Ok(url) = std::env::var("OPAMP_TEST_DATABASE_URL") {
        return Some(url);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.ci/postgres.sh");
    let dir = format!("/tmp/opamp-pg-test-{}-interop", std::process::id());
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg("start")
        .arg(&dir)
        .arg(std::process::id().to_string())
        .output();
    let failure = match output {
        Ok(output) if output.status.success() => {
            let stdout = String::from_utf8_lossy(&output.stdout);
            if let Some(url) = stdout
                .lines()
                .find_map(|line| line.strip_prefix("OPAMP_TEST_DATABASE_URL="))
            {
                return Some(url.to_owned());
            }
            format!("postgres.sh printed no URL: {stdout}")
        }
        Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
        Err(error) => error.to_string(),
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and no PostgreSQL could be started: {failure}"
    );
    eprintln!(
        "notice: skipping {test}: no OPAMP_TEST_DATABASE_URL and no PostgreSQL cluster could be started ({})",
        failure.trim()
    );
    None
}
