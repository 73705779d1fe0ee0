//! Running the real `ingress-egress` binary, as a person would from a shell: with only the
//! variables a test gives it (no inherited environment), in a directory of the test's choosing,
//! its output collected line by line.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

/// The binary cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ingress-egress"))
}

/// A command for the binary with exactly `vars` as its environment, run in `dir`.
pub fn command(dir: &Path, vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    command.env_clear().current_dir(dir);
    for (name, value) in vars {
        command.env(name, value);
    }
    die_with_the_test(&mut command);
    command
}

/// Makes the child die when the thread that started it ends, so a test that aborts (and never
/// runs its destructors) leaves no service behind.
pub fn die_with_the_test(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only makes one async-signal-safe call.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Runs the binary to completion with `args`.
pub fn run(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    command(dir, vars)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

/// Output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `ingress-egress serve` in the background, its stdout and stderr lines collected. Stopped
/// (killed) when dropped.
pub struct Service {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub address: String,
}

impl Service {
    /// Starts the service with `vars` (plus `PORT=0` and JSON logs unless given) in `dir` and
    /// waits for its start-up line, which says where it listens.
    pub fn start(dir: &Path, vars: &[(&str, &str)]) -> Self {
        let mut all: Vec<(&str, &str)> = vec![("PORT", "0"), ("LOG_FORMAT", "json")];
        all.retain(|(name, _)| !vars.iter().any(|(given, _)| given == name));
        all.extend_from_slice(vars);
        let mut child = command(dir, &all)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the service starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut service = Self {
            child,
            lines,
            address: String::new(),
        };
        let started = service.wait_for_log(|line| line["message"] == "ingress-egress listening");
        service.address = started["local_url"]
            .as_str()
            .expect("the start-up line says where the service listens")
            .to_owned();
        service
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every JSON log line so far.
    pub fn log(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits (up to 30 s) for a JSON log line that `wanted` accepts.
    pub fn wait_for_log(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..300 {
            if let Some(line) = self.log().into_iter().find(|line| wanted(line)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the service exited ({status}):\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no such log line within 30 s:\n{}", self.lines().join("\n"));
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(response) = client.get(format!("{}/readyz", self.address)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not ready within 30 s:\n{}", self.lines().join("\n"));
    }
}

impl Service {
    /// Stops it as Cloud Run does (SIGTERM) and waits (up to 20 s) for a clean exit, so what it
    /// does on the way out (exporting buffered spans, its last lines) is done.
    pub fn terminate(&mut self) {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(signalled.success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                // The readers have the last lines once the pipes close.
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the service did not stop within 20 s");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A working directory for runs of the binary, with the service's outbox inside; both go when
/// it is dropped.
pub struct Workdir {
    dir: tempfile::TempDir,
    outbox: String,
}

impl Workdir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let outbox = dir.path().join("outbox").display().to_string();
        Self { dir, outbox }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `OUTBOX_DIR` inside the directory.
    pub fn outbox(&self) -> (&'static str, &str) {
        ("OUTBOX_DIR", &self.outbox)
    }
}

/// A private exchange and egress queue on the broker at `url` for one test, deleted when
/// dropped.
pub struct PrivateBus {
    url: String,
    pub exchange: String,
    queue: String,
}

impl PrivateBus {
    pub fn new(url: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            url: url.to_owned(),
            exchange: format!("test-{id}"),
            queue: format!("test-{id}.egress"),
        }
    }

    /// The variables that point the binary at it (a classic egress queue: cheap to delete).
    pub fn vars(&self) -> [(&'static str, &str); 4] {
        [
            ("AMQP_URL", &self.url),
            ("AMQP_EXCHANGE", &self.exchange),
            ("AMQP_EGRESS_QUEUE", &self.queue),
            ("AMQP_EGRESS_QUEUE_TYPE", "classic"),
        ]
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        crate::helpers::delete_broker_objects(&self.url, &self.exchange, &self.queue);
    }
}
