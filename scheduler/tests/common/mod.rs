//! Helpers shared by the black-box tests: a fresh SLUICE_HOME per test, the real
//! `sluice` binary run with a bound, long-running processes that are always killed,
//! and bounded polling on observable conditions.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(150);

/// Settings that make the scheduler react in tenths of a second instead of seconds.
/// The worker timeout is kept a little above the brief's 1.5 s so that a heartbeat
/// delayed by a busy 2-core machine is not mistaken for a dead worker.
pub const FAST_ENV: &[(&str, &str)] = &[
    ("SLUICE_DAGS_PAUSED_AT_CREATION", "false"),
    ("SLUICE_SCHEDULER__LOOP_INTERVAL_MS", "100"),
    ("SLUICE_SCHEDULER__DAG_REFRESH_INTERVAL_MS", "200"),
    ("SLUICE_SCHEDULER__HEARTBEAT_INTERVAL_MS", "200"),
    ("SLUICE_SCHEDULER__WORKER_TIMEOUT_MS", "3000"),
    ("SLUICE_SCHEDULER__SHUTDOWN_GRACE_MS", "1000"),
    // `standalone` also serves the REST API: on a free port, so tests never collide.
    ("SLUICE_WEB_PORT", "0"),
];

/// Tests that run a scheduler take this lock, so that on a small machine they do not
/// compete for CPU (heartbeats and timings stay meaningful).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One finished command.
pub struct Run {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Everything about the command, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`sluice {}` exited with {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }

    /// stdout parsed as JSON (the whole output).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.describe()))
    }
}

/// A temporary SLUICE_HOME with its DAG folder, and the environment every command gets.
pub struct Sandbox {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    spawned: AtomicU32,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("sluice-it-")
            .tempdir()
            .expect("create temp dir");
        fs::create_dir_all(dir.path().join("dags")).expect("create dags folder");
        let env = FAST_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Sandbox {
            dir,
            env,
            spawned: AtomicU32::new(0),
        }
    }

    /// Adds or replaces an environment variable for every command of this sandbox.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn dags(&self) -> PathBuf {
        self.path().join("dags")
    }

    /// The default SQLite store of this SLUICE_HOME.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.path().join("sluice.db").display())
    }

    /// The database URL commands use.
    pub fn db_url(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "SLUICE_DATABASE_URL")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| self.sqlite_url())
    }

    pub fn write_dag(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dags().join(file);
        fs::write(&path, text).expect("write DAG file");
        path
    }

    /// `sluice ARGS` with this sandbox's environment and nothing inherited that could
    /// change Sluice's configuration.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(self.path()).stdin(Stdio::null());
        for (k, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
            if k.starts_with("SLUICE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("SLUICE_HOME", self.path())
            .env("SLUICE_DAGS_FOLDER", self.dags())
            .env("SLUICE_LOG", "info,sqlx=warn")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a short command to completion (killed and failed after 60 s).
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_bounded(args, Duration::from_secs(60))
    }

    /// Runs a command; if it has not exited within `limit` it is killed and the
    /// returned status is the kill's.
    pub fn run_bounded(&self, args: &[&str], limit: Duration) -> Run {
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn sluice");
        let out = reader(child.stdout.take().expect("stdout"));
        let err = reader(child.stderr.take().expect("stderr"));
        let deadline = started + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                break child.wait().expect("wait after kill");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let elapsed = started.elapsed();
        Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
            elapsed,
        }
    }

    /// Runs a command that must succeed.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert!(run.success(), "expected success:\n{}", run.describe());
        run
    }

    /// Starts a long-running command (`standalone`, `scheduler`); its output goes to
    /// files in the sandbox. The process is killed when the guard is dropped.
    pub fn spawn(&self, args: &[&str]) -> Daemon {
        let n = self.spawned.fetch_add(1, Ordering::SeqCst) + 1;
        let name = format!("{}-{n}", args.join("_"));
        let stdout_path = self.path().join(format!("{name}.stdout"));
        let stderr_path = self.path().join(format!("{name}.stderr"));
        let mut cmd = self.command(args);
        cmd.stdout(fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(fs::File::create(&stderr_path).expect("stderr file"));
        let child = cmd.spawn().expect("spawn sluice");
        Daemon {
            child,
            name,
            stdout_path,
            stderr_path,
            exited: None,
        }
    }

    /// `sluice dags runs DAG --json`, newest first; Err while the DAG is not recorded
    /// yet or the command fails.
    pub fn runs(&self, dag_id: &str) -> Result<Vec<Value>, String> {
        let run = self.run(&["dags", "runs", dag_id, "--json", "--limit", "1000"]);
        if !run.success() {
            return Err(run.describe());
        }
        match serde_json::from_str::<Value>(run.stdout.trim()) {
            Ok(Value::Array(runs)) => Ok(runs),
            _ => Err(format!("not a JSON array:\n{}", run.describe())),
        }
    }

    /// Polls `dags runs` until `done` holds for the runs, failing after `limit` with the
    /// last output. `daemons` are shown in the failure message.
    pub fn wait_runs(
        &self,
        dag_id: &str,
        what: &str,
        limit: Duration,
        daemons: &[&Daemon],
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        wait_until(what, limit, daemons, || {
            let runs = self.runs(dag_id)?;
            if done(&runs) {
                Ok(runs)
            } else {
                Err(serde_json::to_string_pretty(&runs).unwrap_or_default())
            }
        })
    }
}

fn reader<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Polls `probe` every [`POLL`] until it returns Ok, or fails after `limit` showing the
/// last thing it saw (and the logs of `daemons`).
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    daemons: &[&Daemon],
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let last = match probe() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let logs: Vec<String> = daemons.iter().map(|d| d.log_tail(60)).collect();
            panic!(
                "timed out after {limit:?} waiting for {what}\n--- last observation ---\n{last}\n{}",
                logs.join("\n")
            );
        }
        thread::sleep(POLL);
    }
}

/// A long-running `sluice` process, killed (SIGKILL) when dropped if still running.
pub struct Daemon {
    child: Child,
    name: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Daemon {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap_or_else(|e| panic!("cannot send {sig} to {}: {e}", self.name));
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited {
            return Some(s);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// Waits until the process's log contains `needle`; fails if it exits first or
    /// after `limit`.
    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if !self.is_running() {
                panic!(
                    "{} exited ({:?}) before logging {needle:?}\n{}",
                    self.name,
                    self.exited,
                    self.log_tail(40)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not log {needle:?} within {limit:?}\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the scheduler has opened the store and recorded its DAG folder.
    pub fn wait_ready(&mut self) {
        self.wait_log("DAG folder loaded", Duration::from_secs(30));
    }

    pub fn is_running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited.is_none()
    }

    /// What the process printed on stdout so far (addresses it listens on).
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// The process's stderr so far (its logs).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        format!(
            "--- last {} lines of {} stderr ---\n{}",
            lines,
            self.name,
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            eprintln!("{}", self.log_tail(80));
        }
    }
}

/// A shell command for a task that, the first time, records its process id in
/// `marker` and sleeps 30 s; once `marker` exists it prints `done` at once.
pub fn sleep_once_command(marker: &Path) -> String {
    let m = marker.display();
    format!("if [ -e '{m}' ]; then echo done; else echo $$ > '{m}'; exec sleep 30; fi")
}

/// The pid a [`sleep_once_command`] wrote, once it is there.
pub fn read_pid(marker: &Path) -> Option<i32> {
    fs::read_to_string(marker).ok()?.trim().parse().ok()
}

/// True when the process exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Kills, when dropped, the process group whose leader's pid a task wrote to `marker`
/// (a task left behind by a SIGKILLed scheduler).
pub struct OrphanGuard(pub PathBuf);

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.0) {
            if process_alive(pid) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Runs a future on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A task instance with its tries, as the store records them.
pub struct TiRecord {
    pub ti: sluice_store::TiRow,
    pub tries: Vec<sluice_store::TryRow>,
}

/// Task instances (with tries) of one run, read straight from the store at `url`.
pub fn task_records(url: &str, dag_id: &str, run_id: &str) -> Vec<TiRecord> {
    block_on(async {
        let store = sluice_store::Store::connect(url)
            .await
            .expect("connect to the store");
        let run = store
            .run(dag_id, run_id)
            .await
            .expect("read run")
            .unwrap_or_else(|| panic!("run {run_id} of {dag_id} is not in the store"));
        let mut out = Vec::new();
        for ti in store
            .task_instances(run.id)
            .await
            .expect("read task instances")
        {
            let tries = store.tries(ti.id).await.expect("read tries");
            out.push(TiRecord { ti, tries });
        }
        store.close().await;
        out
    })
}

pub fn record<'a>(records: &'a [TiRecord], task_id: &str) -> &'a TiRecord {
    records
        .iter()
        .find(|r| r.ti.task_id == task_id)
        .unwrap_or_else(|| panic!("no task instance {task_id}"))
}

/// RFC 3339 without fractional seconds, in UTC.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn parse_time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a time string: {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad time {s}: {e}"))
        .with_timezone(&chrono::Utc)
}

pub fn states(runs: &[Value]) -> Vec<&str> {
    runs.iter()
        .map(|r| r["state"].as_str().unwrap_or("?"))
        .collect()
}

/// The whole-second UTC time `secs` before now.
pub fn seconds_ago(secs: i64) -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(secs)
}

/// A fresh PostgreSQL database, dropped at the end of the test even when it fails.
pub struct PgDb {
    /// Runs the store's queries from these synchronous tests.
    pub rt: tokio::runtime::Runtime,
    db: Option<sluice_store::testing::TestDb>,
}

impl PgDb {
    pub fn new() -> PgDb {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        // Panics (fails the test) when PostgreSQL is unreachable: never skipped.
        let db = rt.block_on(sluice_store::testing::TestDb::postgres());
        PgDb { rt, db: Some(db) }
    }

    pub fn url(&self) -> String {
        self.db.as_ref().expect("db").url.clone()
    }

    pub fn store(&self) -> &sluice_store::Store {
        &self.db.as_ref().expect("db").store
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            self.rt.block_on(db.cleanup());
        }
    }
}
