//! `sluice standalone` end to end on SQLite: triggered runs and their logs, pause and
//! unpause, scheduled runs with and without catchup, and what happens to a running
//! try when the process is stopped (SIGTERM) or killed (SIGKILL).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    parse_time, process_alive, read_pid, record, seconds_ago, sleep_once_command, states,
    task_records, wait_until, Daemon, OrphanGuard, Sandbox,
};
use nix::sys::signal::Signal;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// Waits until the standalone has recorded `dag_id` (its DAG folder was loaded).
fn wait_recorded(sb: &Sandbox, dag_id: &str, daemon: &Daemon) {
    wait_until(
        &format!("DAG {dag_id} to be recorded"),
        WAIT,
        &[daemon],
        || sb.runs(dag_id).map(|_| ()),
    );
}

/// Triggers a manual run and returns its run id.
fn trigger(sb: &Sandbox, dag_id: &str) -> (String, common::Run) {
    let run = sb.ok(&["dags", "trigger", dag_id]);
    let run_id = run
        .stdout
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no run id in:\n{}", run.describe()))
        .to_string();
    assert!(run_id.starts_with("manual__"), "{}", run.describe());
    (run_id, run)
}

fn find_run<'a>(runs: &'a [Value], run_id: &str) -> Option<&'a Value> {
    runs.iter().find(|r| r["run_id"] == run_id)
}

/// Waits until the run is finished (success or failed) and returns its record.
fn wait_finished(sb: &Sandbox, dag_id: &str, run_id: &str, daemons: &[&Daemon]) -> Value {
    let runs = sb.wait_runs(
        dag_id,
        &format!("run {run_id} to finish"),
        WAIT,
        daemons,
        |runs| {
            find_run(runs, run_id)
                .is_some_and(|r| r["state"] == "success" || r["state"] == "failed")
        },
    );
    find_run(&runs, run_id).cloned().expect("run present")
}

fn log_file(sb: &Sandbox, dag_id: &str, run_id: &str, task_id: &str, attempt: u32) -> PathBuf {
    sb.path()
        .join("logs")
        .join(format!("dag_id={dag_id}"))
        .join(format!("run_id={run_id}"))
        .join(format!("task_id={task_id}"))
        .join(format!("attempt={attempt}.log"))
}

#[test]
fn standalone_runs_a_triggered_dag_and_keeps_a_log_per_try() {
    let _serial = common::serial();
    let sb = Sandbox::new();
    sb.write_dag(
        "etl.toml",
        r#"[dag]
id = "etl"

[defaults]
kind = "shell"

[tasks.extract]
command = "echo extract-said-hello"

[tasks.transform]
upstream = ["extract"]
command = "echo transform-said-hello"

[tasks.load]
upstream = ["transform"]
command = "echo load-said-hello"
"#,
    );
    let mut standalone = sb.spawn(&["standalone"]);
    standalone.wait_ready();
    wait_recorded(&sb, "etl", &standalone);

    let (run_id, _) = trigger(&sb, "etl");
    let run = wait_finished(&sb, "etl", &run_id, &[&standalone]);
    assert_eq!(run["state"], "success", "{run}");

    let runs = sb.runs("etl").expect("runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let r = &runs[0];
    assert_eq!(r["dag_id"], "etl");
    assert_eq!(r["run_type"], "manual");
    assert!(
        r["start_date"].is_string() && r["end_date"].is_string(),
        "{r}"
    );
    assert!(
        parse_time(&r["start_date"]) <= parse_time(&r["end_date"]),
        "{r}"
    );

    for task in ["extract", "transform", "load"] {
        let path = log_file(&sb, "etl", &run_id, task, 1);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("log {} of {task}: {e}", path.display()));
        assert!(
            text.contains(&format!("{task}-said-hello")),
            "the log of {task} holds its stdout:\n{text}"
        );
        assert!(
            !log_file(&sb, "etl", &run_id, task, 2).exists(),
            "{task} ran once, so it has one log"
        );
    }
}

#[test]
fn a_paused_dag_keeps_its_triggered_run_queued_until_unpaused() {
    let _serial = common::serial();
    let sb = Sandbox::new();
    sb.write_dag(
        "held.toml",
        "[dag]\nid = \"held\"\n\n[tasks.work]\nkind = \"shell\"\ncommand = \"echo held work\"\n",
    );
    sb.write_dag(
        "control.toml",
        "[dag]\nid = \"control\"\n\n[tasks.work]\nkind = \"noop\"\n",
    );
    let mut standalone = sb.spawn(&["standalone"]);
    standalone.wait_ready();
    wait_recorded(&sb, "held", &standalone);
    wait_recorded(&sb, "control", &standalone);

    let paused = sb.ok(&["dags", "pause", "held"]);
    assert!(
        paused.stdout.contains("DAG held is paused."),
        "{}",
        paused.describe()
    );
    let (held_run, triggered) = trigger(&sb, "held");
    assert!(
        triggered.stdout.contains("is paused"),
        "triggering a paused DAG says so:\n{}",
        triggered.describe()
    );

    // A run of another DAG triggered afterwards completes: the scheduler has had
    // passes since the paused DAG's run was queued.
    let (control_run, _) = trigger(&sb, "control");
    let control = wait_finished(&sb, "control", &control_run, &[&standalone]);
    assert_eq!(control["state"], "success", "{control}");
    let runs = sb.runs("held").expect("runs of held");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["run_id"], held_run.as_str());
    assert_eq!(
        runs[0]["state"], "queued",
        "a paused DAG's run does not start: {runs:?}"
    );
    assert!(runs[0]["start_date"].is_null(), "{runs:?}");

    let unpaused = sb.ok(&["dags", "unpause", "held"]);
    assert!(
        unpaused.stdout.contains("DAG held is unpaused."),
        "{}",
        unpaused.describe()
    );
    let held = wait_finished(&sb, "held", &held_run, &[&standalone]);
    assert_eq!(held["state"], "success", "{held}");
}

fn hourly_dag(dag_id: &str, start: &str, catchup: bool) -> String {
    format!(
        r#"[dag]
id = "{dag_id}"
schedule = "every 1h"
start_date = {start}
catchup = {catchup}
max_active_runs = 2

[defaults]
kind = "shell"

[tasks.first]
command = "sleep 0.3; echo {{{{ ds }}}}"

[tasks.second]
upstream = ["first"]
command = "sleep 0.3; echo {{{{ data_interval_start }}}}"
"#
    )
}

/// The largest number of runs that were running at the same instant.
fn max_concurrent(runs: &[Value]) -> usize {
    let spans: Vec<_> = runs
        .iter()
        .map(|r| (parse_time(&r["start_date"]), parse_time(&r["end_date"])))
        .collect();
    spans
        .iter()
        .map(|(t, _)| spans.iter().filter(|(s, e)| s <= t && t < e).count())
        .max()
        .unwrap_or(0)
}

#[test]
fn scheduled_runs_catch_up_one_per_interval_or_only_the_latest() {
    let _serial = common::serial();
    let sb = Sandbox::new();
    // Five whole intervals have ended; the sixth ends in about an hour.
    let start = seconds_ago(5 * 3600 + 30);
    let start_text = common::rfc3339(start);
    sb.write_dag(
        "catchup.toml",
        &hourly_dag("hourly_catchup", &start_text, true),
    );
    sb.write_dag(
        "latest.toml",
        &hourly_dag("hourly_latest", &start_text, false),
    );
    sb.write_dag(
        "control.toml",
        "[dag]\nid = \"control\"\n\n[tasks.work]\nkind = \"noop\"\n",
    );
    let mut standalone = sb.spawn(&["standalone"]);
    standalone.wait_ready();

    let all_done = |n: usize| {
        move |runs: &[Value]| runs.len() >= n && runs.iter().all(|r| r["state"] == "success")
    };
    sb.wait_runs(
        "hourly_catchup",
        "5 successful catch-up runs",
        Duration::from_secs(60),
        &[&standalone],
        all_done(5),
    );
    sb.wait_runs(
        "hourly_latest",
        "1 successful run",
        WAIT,
        &[&standalone],
        all_done(1),
    );
    // Let the scheduler make more passes before counting (a later run completes).
    wait_recorded(&sb, "control", &standalone);
    let (control_run, _) = trigger(&sb, "control");
    wait_finished(&sb, "control", &control_run, &[&standalone]);

    let hour = chrono::Duration::hours(1);
    let mut runs = sb.runs("hourly_catchup").expect("runs");
    runs.reverse(); // oldest first
    assert_eq!(
        runs.len(),
        5,
        "exactly one run per ended interval: {runs:#?}"
    );
    for (i, r) in runs.iter().enumerate() {
        let expected_start = start + hour * i as i32;
        assert_eq!(r["state"], "success", "{r}");
        assert_eq!(r["run_type"], "scheduled", "{r}");
        assert_eq!(
            parse_time(&r["logical_date"]),
            expected_start,
            "run {i}: {r}"
        );
        assert_eq!(
            parse_time(&r["data_interval_start"]),
            expected_start,
            "run {i}: {r}"
        );
        assert_eq!(
            parse_time(&r["data_interval_end"]),
            expected_start + hour,
            "run {i}: {r}"
        );
        let run_id = r["run_id"].as_str().unwrap_or("");
        assert!(run_id.starts_with("scheduled__"), "{r}");
        assert_eq!(
            parse_time(&Value::from(&run_id["scheduled__".len()..])),
            expected_start,
            "{r}"
        );
    }
    assert!(
        max_concurrent(&runs) <= 2,
        "max_active_runs = 2 was exceeded: {runs:#?}"
    );

    let latest = sb.runs("hourly_latest").expect("runs");
    assert_eq!(
        latest.len(),
        1,
        "catchup = false creates only the latest interval: {latest:#?}"
    );
    assert_eq!(states(&latest), ["success"]);
    assert_eq!(
        parse_time(&latest[0]["data_interval_start"]),
        start + hour * 4,
        "{latest:?}"
    );
    assert_eq!(
        parse_time(&latest[0]["data_interval_end"]),
        start + hour * 5,
        "{latest:?}"
    );

    // Both continue with the interval that ends an hour after the last one.
    for dag in ["hourly_catchup", "hourly_latest"] {
        let show = sb.ok(&["dags", "show", dag, "--json"]).json();
        assert_eq!(
            parse_time(&show["next_run_after"]),
            start + hour * 6,
            "{dag}: {show}"
        );
    }
}

/// A DAG whose first task sleeps 30 s on its first try only, then one more task.
fn two_step_dag(dag_id: &str, marker: &std::path::Path, retries: u32) -> String {
    format!(
        r#"[dag]
id = "{dag_id}"

[tasks.slow]
kind = "shell"
retries = {retries}
retry_delay = "1s"
command = "{}"

[tasks.after]
kind = "shell"
upstream = ["slow"]
command = "echo after"
"#,
        sleep_once_command(marker).replace('"', "\\\"")
    )
}

/// Waits until the first try of `slow` has started its 30 s sleep; returns its pid.
fn wait_sleeping(marker: &std::path::Path, daemon: &Daemon) -> i32 {
    wait_until("the slow task to start sleeping", WAIT, &[daemon], || {
        read_pid(marker).ok_or_else(|| format!("{} not written yet", marker.display()))
    })
}

#[test]
fn sigterm_stops_the_running_try_and_it_runs_again_after_restart() {
    let _serial = common::serial();
    let sb = Sandbox::new();
    let marker = sb.path().join("slow-started");
    let _orphan = OrphanGuard(marker.clone());
    // retries = 0: a try stopped by a shutdown must not use up a retry.
    sb.write_dag("graceful.toml", &two_step_dag("graceful", &marker, 0));
    let mut first = sb.spawn(&["standalone"]);
    first.wait_ready();
    wait_recorded(&sb, "graceful", &first);
    let (run_id, _) = trigger(&sb, "graceful");
    let task_pid = wait_sleeping(&marker, &first);

    first.signal(Signal::SIGTERM);
    let asked = Instant::now();
    let status = first.wait_exit(Duration::from_secs(10));
    let took = asked.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "standalone still running 10 s after SIGTERM (grace is 1 s)\n{}",
            first.log_tail(40)
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "a SIGTERM shutdown is clean\n{}",
        first.log_tail(40)
    );
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
    assert!(
        !process_alive(task_pid),
        "the task's command (pid {task_pid}) was stopped with the scheduler"
    );

    // Nothing is left running, and the run is not failed by the shutdown.
    let runs = sb.runs("graceful").expect("runs");
    assert_eq!(
        find_run(&runs, &run_id).map(|r| r["state"].clone()),
        Some("running".into()),
        "{runs:?}"
    );
    let records = task_records(&sb.sqlite_url(), "graceful", &run_id);
    for r in &records {
        assert_ne!(
            r.ti.state.as_deref(),
            Some("running"),
            "{} left running: {:?}",
            r.ti.task_id,
            r.ti
        );
        for t in &r.tries {
            assert_ne!(
                t.state, "running",
                "{} try {} left running: {t:?}",
                r.ti.task_id, t.try_number
            );
        }
    }

    let second = sb.spawn(&["standalone"]);
    let run = wait_finished(&sb, "graceful", &run_id, &[&first, &second]);
    assert_eq!(run["state"], "success", "{run}");
    let records = task_records(&sb.sqlite_url(), "graceful", &run_id);
    let slow = record(&records, "slow");
    assert_eq!(slow.ti.state.as_deref(), Some("success"), "{:?}", slow.ti);
    assert_eq!(
        slow.ti.try_number, 2,
        "the interrupted try was run again: {:?}",
        slow.ti
    );
    assert_eq!(slow.tries.len(), 2, "{:?}", slow.tries);
    assert!(
        slow.tries[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("interrupted")),
        "the first try records that it was interrupted: {:?}",
        slow.tries[0]
    );
    assert_eq!(slow.tries[1].state, "success", "{:?}", slow.tries[1]);
    let after = record(&records, "after");
    assert_eq!(after.ti.state.as_deref(), Some("success"), "{:?}", after.ti);
    assert_eq!(after.ti.try_number, 1, "{:?}", after.ti);
    for r in &records {
        for t in &r.tries {
            assert_ne!(
                t.state, "running",
                "{} try {} left running",
                r.ti.task_id, t.try_number
            );
        }
    }
    let log = std::fs::read_to_string(log_file(&sb, "graceful", &run_id, "slow", 2))
        .expect("log of try 2");
    assert!(log.contains("done"), "{log}");
}

#[test]
fn sigkill_leaves_a_stale_try_that_a_restart_fails_into_its_retry() {
    let _serial = common::serial();
    let sb = Sandbox::new();
    let marker = sb.path().join("slow-started");
    // The killed scheduler cannot stop its task; this guard does, at the end.
    let _orphan = OrphanGuard(marker.clone());
    sb.write_dag("crashy.toml", &two_step_dag("crashy", &marker, 1));
    let mut first = sb.spawn(&["standalone"]);
    first.wait_ready();
    wait_recorded(&sb, "crashy", &first);
    let (run_id, _) = trigger(&sb, "crashy");
    wait_sleeping(&marker, &first);

    first.kill9();
    assert!(!first.is_running());

    let restarted = Instant::now();
    let second = sb.spawn(&["standalone"]);
    let run = wait_finished(&sb, "crashy", &run_id, &[&first, &second]);
    assert_eq!(run["state"], "success", "{run}");
    assert!(restarted.elapsed() < WAIT);

    let records = task_records(&sb.sqlite_url(), "crashy", &run_id);
    let slow = record(&records, "slow");
    assert_eq!(slow.ti.state.as_deref(), Some("success"), "{:?}", slow.ti);
    assert_eq!(slow.ti.try_number, 2, "{:?}", slow.ti);
    assert_eq!(slow.tries.len(), 2, "{:?}", slow.tries);
    let stale = &slow.tries[0];
    assert_eq!(stale.try_number, 1);
    // A failed try that is retried is recorded as `up_for_retry` (as every retried
    // failure is); one without retries left as `failed`.
    assert!(
        stale.state == "up_for_retry" || stale.state == "failed",
        "the dead worker's try is failed (into its retry): {stale:?}"
    );
    assert!(
        stale
            .error
            .as_deref()
            .is_some_and(|e| e.contains("heartbeat")),
        "the failure says the worker stopped heartbeating: {stale:?}"
    );
    assert!(stale.end_date.is_some(), "{stale:?}");
    assert_eq!(slow.tries[1].state, "success", "{:?}", slow.tries[1]);
    let after = record(&records, "after");
    assert_eq!(after.ti.state.as_deref(), Some("success"), "{:?}", after.ti);
    assert_eq!(after.ti.try_number, 1, "{:?}", after.ti);
}

#[test]
fn standalone_and_cli_commands_can_open_a_fresh_home_at_the_same_time() {
    let _serial = common::serial();
    // A user starts `sluice standalone` on a new machine and, at the same moment, runs
    // other commands (a script, a second terminal). Each first use creates and
    // migrates the SQLite store; all of them must succeed, and the standalone must
    // keep running. The race is timing-dependent, so several fresh homes are tried.
    for round in 1..=8 {
        let sb = Sandbox::new();
        sb.write_dag(
            "one.toml",
            "[dag]\nid = \"one\"\n\n[tasks.a]\nkind = \"noop\"\n",
        );
        let (mut standalone, runs) = std::thread::scope(|scope| {
            let commands: Vec<&[&str]> = vec![
                &["db", "migrate"],
                &["dags", "list", "--json"],
                &["pools", "list"],
            ];
            let handles: Vec<_> = commands
                .into_iter()
                .map(|args| scope.spawn(|| sb.run(args)))
                .collect();
            let standalone = sb.spawn(&["standalone"]);
            let runs: Vec<common::Run> = handles
                .into_iter()
                .map(|h| h.join().expect("command thread"))
                .collect();
            (standalone, runs)
        });
        for run in &runs {
            assert!(
                run.success(),
                "round {round}: a command run while the standalone started failed:\n{}",
                run.describe()
            );
        }
        standalone.wait_ready();
        assert!(
            standalone.is_running(),
            "round {round}: the standalone stopped\n{}",
            standalone.log_tail(20)
        );
    }
}
