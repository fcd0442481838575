//! Building and running the OpenTelemetry Collector programs: the
//! `opampsupervisor` and a minimal Collector (`otelcol-opamp`: OTLP
//! receiver, debug exporter, OpAMP extension), both built from the Go module
//! proxy by `interop/build-collector.sh`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opamp_testkit::{TIMEOUT, skip_or_fail};
use tokio::process::Child;

use crate::fleet::{collect_lines, dump, spawn_piped};
use crate::go::run_build_script;

/// The Collector release the programs are built from (pinned in
/// `interop/build-collector.sh`).
pub const COLLECTOR_VERSION: &str = "0.149.0";

/// The feature gate the OpAMP extension needs before it accepts
/// `accepts_restart_command` (found in the extension's `factory.go`).
pub const REMOTE_RESTARTS_GATE: &str = "extension.opampextension.RemoteRestarts";

/// Turns off the Collector's own metrics: otherwise every Collector (the
/// supervisor's bootstrap run included) binds 127.0.0.1:8888 and tests
/// cannot run side by side. Passed as an extra `--config` (the `yaml:`
/// provider), which the Collector merges last.
pub const NO_OWN_METRICS: &str = "yaml:service::telemetry::metrics::level: none";

/// Paths of the built Collector programs.
#[derive(Debug, Clone)]
pub struct CollectorPrograms {
    /// The Collector's OpAMP supervisor.
    pub supervisor: PathBuf,
    /// A Collector with the OTLP receiver, the debug exporter and the OpAMP
    /// extension.
    pub collector: PathBuf,
}

/// Builds (or finds in the cache) the Collector programs once per test
/// process and returns their paths.
///
/// `None` means "skip this test": Go is missing or the build failed, and a
/// notice was printed. With `CI` set the same situation panics instead.
pub fn collector_programs() -> Option<&'static CollectorPrograms> {
    static PROGRAMS: OnceLock<Result<CollectorPrograms, String>> = OnceLock::new();
    match PROGRAMS.get_or_init(build) {
        Ok(programs) => Some(programs),
        Err(reason) => skip_or_fail("the Collector interop tests", reason),
    }
}

fn build() -> Result<CollectorPrograms, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build-collector.sh");
    let stdout = run_build_script(&script, None, "Go 1.25")?;
    let dir = PathBuf::from(
        stdout
            .lines()
            .last()
            .ok_or("interop/build-collector.sh printed no directory")?
            .trim(),
    );
    let programs = CollectorPrograms {
        supervisor: dir.join("opampsupervisor"),
        collector: dir.join("otelcol-opamp"),
    };
    for program in [&programs.supervisor, &programs.collector] {
        if !program.is_file() {
            return Err(format!("{} is missing after the build", program.display()));
        }
    }
    Ok(programs)
}

/// A Collector config with an OTLP/HTTP receiver on `port` feeding the
/// debug exporter (traces pipeline).
pub fn otlp_pipeline_config(port: u16) -> String {
    format!(
        "receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{port}\n\
         exporters:\n  debug: {{}}\n\
         service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n"
    )
}

/// Whether an OTLP/HTTP receiver answers an empty JSON trace export on
/// 127.0.0.1:`port` with 200.
pub async fn otlp_receiver_answers(port: u16) -> bool {
    let addr = ([127, 0, 0, 1], port).into();
    matches!(
        crate::fleet::http_request(addr, "POST", "/v1/traces", "application/json", b"{}").await,
        Ok((200, _))
    )
}

/// Waits until the OTLP/HTTP receiver on 127.0.0.1:`port` answers
/// ([`otlp_receiver_answers`]); fails the test, naming `what`, after
/// [`TIMEOUT`].
pub async fn wait_otlp_receiver(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !otlp_receiver_answers(port).await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the supervisor connects and what it declares.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// OpAMP endpoint (`ws://`, `wss://`, `http://`, `https://`).
    pub endpoint: String,
    /// The instance uid (canonical UUID) the supervisor is told to use.
    pub instance_uid: String,
    /// `agent::validate_config`: run `otelcol validate` before applying a
    /// remote config (so a bad config is FAILED with the Collector's own
    /// message while the previous one keeps running).
    pub validate_config: bool,
    /// `server::tls::ca_file` for `wss://`/`https://`.
    pub ca_file: Option<PathBuf>,
    /// A value for the `opamp-rs.test` non-identifying attribute.
    pub test_name: String,
}

impl SupervisorSettings {
    /// Settings for `endpoint` with a fresh instance uid and validation on.
    pub fn new(endpoint: impl Into<String>, test_name: &str) -> Self {
        Self {
            endpoint: endpoint.into(),
            instance_uid: uuid::Uuid::now_v7().to_string(),
            validate_config: true,
            ca_file: None,
            test_name: test_name.to_owned(),
        }
    }

    fn yaml(&self, collector: &Path, storage: &Path) -> String {
        let tls = match &self.ca_file {
            Some(ca) => format!("  tls:\n    ca_file: {}\n", ca.display()),
            None => String::new(),
        };
        // config_apply_timeout: the supervisor reports APPLIED only once it
        // has run out, and only if the Collector reported healthy by then
        // (otherwise FAILED), so it is a wait on every apply but must leave
        // a busy machine time to restart the Collector: 5 s (the default).
        format!(
            "server:\n  endpoint: {endpoint}\n{tls}\
             capabilities:\n  accepts_remote_config: true\n  reports_remote_config: true\n  \
             reports_effective_config: true\n  reports_health: true\n  reports_own_metrics: false\n  \
             reports_own_logs: true\n  reports_own_traces: false\n  reports_available_components: true\n  \
             accepts_restart_command: true\n  accepts_opamp_connection_settings: true\n  \
             reports_heartbeat: true\n\
             agent:\n  executable: {collector}\n  instance_id: {uid}\n  config_apply_timeout: 5s\n  \
             bootstrap_timeout: 60s\n  orphan_detection_interval: 1s\n  validate_config: {validate}\n  \
             args: [\"--config\", \"{no_metrics}\"]\n  description:\n    identifying_attributes:\n      \
             service.name: opamp-rs-interop-collector\n    non_identifying_attributes:\n      \
             opamp-rs.test: {test}\n\
             storage:\n  directory: {storage}\n\
             telemetry:\n  logs:\n    level: debug\n    output_paths: [stdout]\n",
            endpoint = self.endpoint,
            collector = collector.display(),
            uid = self.instance_uid,
            validate = self.validate_config,
            no_metrics = NO_OWN_METRICS,
            test = self.test_name,
            storage = storage.display(),
        )
    }
}

/// A running `opampsupervisor` (which runs the Collector). Killed when
/// dropped; if the test is failing then, the supervisor's log and the
/// Collector's `agent.log` are written to the test's output.
#[derive(Debug)]
pub struct SupervisorProcess {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
    /// The supervisor's config as written.
    pub config_yaml: String,
}

impl SupervisorProcess {
    /// Writes the supervisor's config and starts it.
    pub fn start(programs: &CollectorPrograms, settings: &SupervisorSettings) -> Self {
        let dir = tempfile::tempdir().expect("supervisor directory");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage directory");
        let config_yaml = settings.yaml(&programs.collector, &storage);
        let config = dir.path().join("supervisor.yaml");
        std::fs::write(&config, &config_yaml).expect("writing the supervisor config");
        // Its own process group, which its Collector joins: a test that
        // fails kills both at once (killed alone, the supervisor leaves its
        // Collector running).
        let (child, output) = spawn(
            &programs.supervisor,
            &["--config".to_owned(), config.display().to_string()],
            true,
        );
        Self {
            child,
            output,
            dir,
            config_yaml,
        }
    }

    /// Stops the supervisor the way it expects (SIGINT: it then stops the
    /// Collector and says goodbye to the server; it does not handle SIGTERM
    /// that way) and waits for it to exit.
    pub async fn interrupt(mut self) {
        interrupt(&mut self.child, "opampsupervisor").await;
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("storage/agent.log")).unwrap_or_default()
    }
}

impl Drop for SupervisorProcess {
    fn drop(&mut self) {
        // Still running (no `interrupt`): kill the whole process group.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            dump(
                "opampsupervisor",
                &self.output,
                &[
                    ("supervisor config".to_owned(), self.config_yaml.clone()),
                    ("Collector agent.log".to_owned(), self.agent_log()),
                ],
            );
        }
    }
}

/// A running Collector started directly (its OpAMP extension talks to the
/// server, no supervisor). Killed when dropped; its output is written to a
/// failing test's output.
#[derive(Debug)]
pub struct CollectorProcess {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    config_yaml: String,
    _dir: tempfile::TempDir,
}

impl CollectorProcess {
    /// Writes `config_yaml` and starts the Collector with it (plus
    /// [`NO_OWN_METRICS`] and `extra_args`).
    pub fn start(programs: &CollectorPrograms, config_yaml: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("collector directory");
        let config = dir.path().join("collector.yaml");
        std::fs::write(&config, config_yaml).expect("writing the Collector config");
        let mut args = vec![
            "--config".to_owned(),
            config.display().to_string(),
            "--config".to_owned(),
            NO_OWN_METRICS.to_owned(),
        ];
        args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        let (child, output) = spawn(&programs.collector, &args, false);
        Self {
            child,
            output,
            config_yaml: config_yaml.to_owned(),
            _dir: dir,
        }
    }

    /// Stops the Collector with SIGINT and waits for it to exit.
    pub async fn interrupt(mut self) {
        interrupt(&mut self.child, "otelcol-opamp").await;
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            dump(
                "otelcol-opamp",
                &self.output,
                &[("Collector config".to_owned(), self.config_yaml.clone())],
            );
        }
    }
}

fn spawn(
    program: &Path,
    args: &[String],
    own_process_group: bool,
) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut command = tokio::process::Command::new(program);
    if own_process_group {
        command.process_group(0);
    }
    let mut child = spawn_piped(command.args(args), program, Stdio::null());
    let output = Arc::new(Mutex::new(vec![format!(
        "$ {} {}",
        program.display(),
        args.join(" ")
    )]));
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    tokio::spawn(collect_lines(stdout, Arc::clone(&output)));
    tokio::spawn(collect_lines(stderr, Arc::clone(&output)));
    (child, output)
}

/// Sends SIGINT (with the `kill` program, as the examples' process tests
/// do, rather than another dependency) and waits for the process to exit on
/// its own.
async fn interrupt(child: &mut Child, name: &str) {
    let pid = child
        .id()
        .unwrap_or_else(|| panic!("{name} already exited"));
    let status = tokio::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .await
        .expect("running kill");
    assert!(status.success(), "kill -INT {pid} failed");
    // The supervisor gives its Collector up to 10 s before killing it.
    let patience = TIMEOUT + Duration::from_secs(10);
    match tokio::time::timeout(patience, child.wait()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => panic!("{name}: waiting for exit: {error}"),
        Err(_) => panic!("{name} did not exit within {patience:?} of SIGINT"),
    }
}
