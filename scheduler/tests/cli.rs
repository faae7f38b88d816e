//! Black-box tests of the `sluice` command line that need no running scheduler:
//! `dags validate`, `dags test`, `dags trigger` errors, `dags next`, and start-up
//! against an unreachable database.

mod common;

use std::time::Duration;

use common::Sandbox;
use serde_json::{json, Value};

const GOOD_DAG: &str = r#"[dag]
id = "good"
description = "A valid DAG next to a broken one"

[tasks.hello]
kind = "shell"
command = "echo hello"
"#;

/// Every line of the broken file, so expected positions are computed from the text.
const BROKEN_DAG: &str = r#"# Several problems in one file: each must be reported, each at its place.
[dag]
id = "broken"
schedule = "0 25 * * *"
timezone = "Mars/Olympus"
start_date = 2024-01-01
catchpu = true

[tasks.extract]
kind = "shell"
upstream = ["load"]
command = "echo extract"

[tasks.load]
kind = "shell"
upstream = ["extract", "ghost"]
retires = 2
command = "echo {{ ds }"

[tasks.report]
kind = "shel"
command = "echo report"
"#;

/// 1-based (line, column) of the first occurrence of `needle` in `text`, searching
/// from the line that contains `line_marker`.
fn position(text: &str, line_marker: &str, needle: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        if line.contains(line_marker) {
            let byte = line
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not on line {line:?}"));
            return (i + 1, line[..byte].chars().count() + 1);
        }
    }
    panic!("no line contains {line_marker:?}");
}

#[test]
fn validate_reports_every_problem_at_its_line_and_keeps_good_dags_valid() {
    let sb = Sandbox::new();
    let good = sb.write_dag("good.toml", GOOD_DAG);
    let bad = sb.write_dag("broken.toml", BROKEN_DAG);
    let bad_path = bad.display().to_string();

    let run = sb.run(&["dags", "validate"]);
    assert_eq!(
        run.code(),
        Some(1),
        "validate must fail on a broken file:\n{}",
        run.describe()
    );

    // ((line, column) computed from the file text, message fragment)
    let expected: Vec<((usize, usize), &str)> = vec![
        (
            position(BROKEN_DAG, "schedule =", "\"0 25"),
            "invalid cron expression `0 25 * * *`",
        ),
        (
            position(BROKEN_DAG, "timezone =", "\"Mars"),
            "unknown timezone `Mars/Olympus`",
        ),
        (
            position(BROKEN_DAG, "catchpu", "catchpu"),
            "unknown key `catchpu` in [dag]; did you mean `catchup`?",
        ),
        (
            position(BROKEN_DAG, "upstream = [\"load\"]", "\"load\""),
            "cycle: extract -> load -> extract",
        ),
        (
            position(BROKEN_DAG, "\"ghost\"", "\"ghost\""),
            "unknown upstream task `ghost` in task `load`",
        ),
        (
            position(BROKEN_DAG, "retires", "retires"),
            "unknown key `retires` in [tasks.load] (kind `shell`); did you mean `retries`?",
        ),
        (
            position(BROKEN_DAG, "kind = \"shel\"", "\"shel\""),
            "unknown task kind `shel`; did you mean `shell`?",
        ),
    ];
    let problem_lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{bad_path}:")))
        .collect();
    for ((line, col), message) in &expected {
        let prefix = format!("{bad_path}:{line}:{col}: ");
        assert!(
            problem_lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(message)),
            "expected a line `{prefix}...{message}...`\n{}",
            run.describe()
        );
    }
    // The template syntax error: on the command's line, pointing inside the string.
    let (tline, tstart) = position(BROKEN_DAG, "command = \"echo {{ ds }\"", "\"echo");
    let template_line = problem_lines
        .iter()
        .find(|l| l.contains("template syntax error"))
        .unwrap_or_else(|| panic!("no template syntax error reported\n{}", run.describe()));
    let rest = template_line
        .strip_prefix(&format!("{bad_path}:"))
        .expect("path prefix");
    let mut parts = rest.splitn(3, ':');
    let line: usize = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("line number");
    let col: usize = parts.next().and_then(|s| s.parse().ok()).expect("column");
    assert_eq!(line, tline, "template error line:\n{}", run.describe());
    let string_len = "\"echo {{ ds }\"".len();
    assert!(
        col > tstart && col < tstart + string_len,
        "template error column {col} is not inside the string (columns {tstart}..{}):\n{}",
        tstart + string_len,
        run.describe()
    );

    // One line per problem, nothing else about the broken file, and nothing about
    // the good one.
    assert_eq!(
        problem_lines.len(),
        expected.len() + 1,
        "one line per problem:\n{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains(&good.display().to_string()),
        "the good file has no problem:\n{}",
        run.describe()
    );
    assert!(
        run.stderr
            .contains("8 problem(s) in 1 file(s); 1 DAG(s) valid."),
        "summary counts the good DAG as valid:\n{}",
        run.describe()
    );

    // The good file on its own validates.
    let only_good = sb.run(&["dags", "validate", &good.display().to_string()]);
    assert_eq!(only_good.code(), Some(0), "{}", only_good.describe());
    assert!(
        only_good.stdout.contains("1 DAG(s) valid."),
        "{}",
        only_good.describe()
    );
    assert!(
        only_good.stderr.trim().is_empty(),
        "{}",
        only_good.describe()
    );
}

fn dags_test(sb: &Sandbox, dag_id: &str, extra: &[&str]) -> common::Run {
    let mut args = vec!["dags", "test", dag_id];
    args.extend_from_slice(extra);
    sb.run(&args)
}

fn ti<'a>(out: &'a Value, task_id: &str) -> &'a Value {
    out["task_instances"]
        .as_array()
        .expect("task_instances array")
        .iter()
        .find(|t| t["task_id"] == task_id)
        .unwrap_or_else(|| panic!("no task instance {task_id} in {out}"))
}

#[test]
fn dags_test_json_has_exact_shape_and_passes_xcom_downstream() {
    let sb = Sandbox::new();
    let out_file = sb.path().join("received.txt");
    sb.write_dag(
        "xcom.toml",
        &format!(
            r#"[dag]
id = "xcom_pass"

[tasks.produce]
kind = "shell"
command = '''echo "some log line"; echo '{{"count": 42, "name": "sluice"}}' '''

[tasks.consume]
kind = "shell"
upstream = ["produce"]
command = "echo '{{{{ xcom.produce.name }}}}:{{{{ xcom.produce.count }}}}' > '{}'"
"#,
            out_file.display()
        ),
    );
    let run = dags_test(&sb, "xcom_pass", &["--json", "--date", "2024-08-01"]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one JSON line on stdout:\n{}",
        run.describe()
    );
    let out: Value = serde_json::from_str(lines[0]).expect("JSON line");

    let keys: Vec<&str> = out
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["dag_id", "run_id", "state", "task_instances"],
        "{out}"
    );
    assert_eq!(out["dag_id"], "xcom_pass");
    assert_eq!(out["run_id"], "manual__2024-08-01T00:00:00+00:00");
    assert_eq!(out["state"], "success");
    let tis = out["task_instances"].as_array().expect("array");
    assert_eq!(tis.len(), 2, "{out}");
    for t in tis {
        let keys: Vec<&str> = t
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["task_id", "map_index", "state", "try_number", "duration_ms"],
            "{t}"
        );
        assert_eq!(t["map_index"], json!(-1), "{t}");
        assert_eq!(t["state"], "success", "{t}");
        assert_eq!(t["try_number"], json!(1), "{t}");
        assert!(t["duration_ms"].as_i64().is_some_and(|d| d >= 0), "{t}");
    }
    let ids: Vec<&str> = tis
        .iter()
        .map(|t| t["task_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["produce", "consume"], "{out}");

    let received = std::fs::read_to_string(&out_file).expect("consume wrote its file");
    assert_eq!(
        received.trim(),
        "sluice:42",
        "downstream read the upstream's JSON fields"
    );
}

#[test]
fn dags_test_failure_marks_downstream_upstream_failed_and_runs_all_done() {
    let sb = Sandbox::new();
    sb.write_dag(
        "failing.toml",
        r#"[dag]
id = "failing"

[tasks.boom]
kind = "shell"
command = "echo about to fail; exit 3"

[tasks.after]
kind = "shell"
upstream = ["boom"]
command = "echo should not run"

[tasks.cleanup]
kind = "shell"
upstream = ["boom"]
trigger_rule = "all_done"
command = "echo cleaning up"
"#,
    );
    let run = dags_test(&sb, "failing", &["--json"]);
    assert_eq!(
        run.code(),
        Some(1),
        "a failed run exits 1:\n{}",
        run.describe()
    );
    let out = run.json();
    assert_eq!(out["state"], "failed", "{out}");
    assert_eq!(ti(&out, "boom")["state"], "failed", "{out}");
    assert_eq!(ti(&out, "after")["state"], "upstream_failed", "{out}");
    assert_eq!(
        ti(&out, "after")["try_number"],
        json!(0),
        "never tried: {out}"
    );
    assert_eq!(ti(&out, "cleanup")["state"], "success", "{out}");
}

#[test]
fn dags_test_retries_a_failed_try_and_succeeds_on_the_second() {
    let sb = Sandbox::new();
    let marker = sb.path().join("first-try-happened");
    sb.write_dag(
        "flaky.toml",
        &format!(
            r#"[dag]
id = "flaky"

[tasks.flaky]
kind = "shell"
retries = 1
retry_delay = "1s"
command = "if [ -e '{m}' ]; then echo recovered; else touch '{m}'; echo first try fails >&2; exit 1; fi"
"#,
            m = marker.display()
        ),
    );
    let run = dags_test(&sb, "flaky", &["--json"]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let out = run.json();
    assert_eq!(out["state"], "success", "{out}");
    let t = ti(&out, "flaky");
    assert_eq!(t["state"], "success", "{out}");
    assert_eq!(t["try_number"], json!(2), "{out}");
    assert!(
        run.elapsed >= Duration::from_secs(1),
        "retry_delay of 1s was honoured: {:?}",
        run.elapsed
    );
}

#[test]
fn dags_test_missing_xcom_fails_the_reader_and_names_the_xcom() {
    let sb = Sandbox::new();
    sb.write_dag(
        "silent.toml",
        r#"[dag]
id = "silent"

[tasks.quiet]
kind = "shell"
command = "true"

[tasks.reader]
kind = "shell"
upstream = ["quiet"]
command = "echo {{ xcom.quiet }}"
"#,
    );
    let run = dags_test(&sb, "silent", &["--json"]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let out = run.json();
    assert_eq!(out["state"], "failed", "{out}");
    assert_eq!(ti(&out, "quiet")["state"], "success", "{out}");
    assert_eq!(ti(&out, "reader")["state"], "failed", "{out}");

    let human = dags_test(&sb, "silent", &[]);
    assert_eq!(human.code(), Some(1), "{}", human.describe());
    let failure = human
        .stdout
        .lines()
        .find(|l| l.contains("reader failed"))
        .unwrap_or_else(|| panic!("the output says reader failed:\n{}", human.describe()));
    assert!(
        failure.contains("xcom.quiet"),
        "the failure names the missing xcom:\n{}",
        human.describe()
    );
}

#[test]
fn dags_test_task_timeout_fails_the_task_long_before_the_command_ends() {
    let sb = Sandbox::new();
    sb.write_dag(
        "slow.toml",
        r#"[dag]
id = "slow"

[tasks.sleepy]
kind = "shell"
timeout = "1s"
command = "sleep 30"
"#,
    );
    let run = sb.run_bounded(&["dags", "test", "slow", "--json"], Duration::from_secs(40));
    assert!(
        run.elapsed < Duration::from_secs(10),
        "a 1s timeout must stop a 30s command quickly:\n{}",
        run.describe()
    );
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let out = run.json();
    assert_eq!(out["state"], "failed", "{out}");
    assert_eq!(ti(&out, "sleepy")["state"], "failed", "{out}");
}

#[test]
fn trigger_rejects_conf_that_is_not_a_json_object() {
    let sb = Sandbox::new();
    sb.write_dag("good.toml", GOOD_DAG);

    let array = sb.run(&["dags", "trigger", "good", "--conf", "[1,2]"]);
    assert_ne!(array.code(), Some(0), "{}", array.describe());
    assert!(
        array.stderr.contains("--conf must be a JSON object"),
        "{}",
        array.describe()
    );

    let garbage = sb.run(&["dags", "trigger", "good", "--conf", "nope"]);
    assert_ne!(garbage.code(), Some(0), "{}", garbage.describe());
    assert!(
        garbage.stderr.contains("--conf is not valid JSON"),
        "{}",
        garbage.describe()
    );

    // Neither created a run; a valid conf does.
    sb.ok(&["dags", "trigger", "good", "--conf", r#"{"rows": 5}"#]);
    let runs = sb.runs("good").expect("runs of good");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["conf"], json!({"rows": 5}));
    assert_eq!(runs[0]["state"], "queued");
}

#[test]
fn next_lists_intervals_in_utc_and_in_the_dag_timezone() {
    let sb = Sandbox::new();
    sb.write_dag(
        "seoul.toml",
        r#"[dag]
id = "seoul_daily"
schedule = "0 9 * * *"
timezone = "Asia/Seoul"
start_date = 2024-01-01

[tasks.a]
kind = "noop"
"#,
    );
    let run = sb.ok(&[
        "dags",
        "next",
        "seoul_daily",
        "--count",
        "3",
        "--after",
        "2024-03-09T00:00:00Z",
        "--json",
    ]);
    let out = run.json();
    assert_eq!(
        out,
        json!({
            "dag_id": "seoul_daily",
            "timezone": "Asia/Seoul",
            "intervals": [
                {
                    "start": "2024-03-09T00:00:00+00:00",
                    "end": "2024-03-10T00:00:00+00:00",
                    "start_local": "2024-03-09T09:00:00+09:00",
                    "end_local": "2024-03-10T09:00:00+09:00",
                },
                {
                    "start": "2024-03-10T00:00:00+00:00",
                    "end": "2024-03-11T00:00:00+00:00",
                    "start_local": "2024-03-10T09:00:00+09:00",
                    "end_local": "2024-03-11T09:00:00+09:00",
                },
                {
                    "start": "2024-03-11T00:00:00+00:00",
                    "end": "2024-03-12T00:00:00+00:00",
                    "start_local": "2024-03-11T09:00:00+09:00",
                    "end_local": "2024-03-12T09:00:00+09:00",
                },
            ],
        })
    );
}

#[test]
fn scheduler_gives_up_on_an_unreachable_database_within_its_patience() {
    let mut sb = Sandbox::new();
    sb.set_env(
        "SLUICE_DATABASE_URL",
        "postgres://postgres@127.0.0.1:1/nope",
    );
    sb.set_env("SLUICE_SCHEDULER__DB_CONNECT_PATIENCE_MS", "2000");
    // Bounded well above the expectation, so a slow exit is measured, not hung on.
    let run = sb.run_bounded(&["scheduler"], Duration::from_secs(45));
    // Every expectation is checked, so one failure report shows all that is wrong.
    let mut problems = Vec::new();
    if run.status.code().is_none() {
        problems.push("it did not exit on its own (killed after 45 s)");
    }
    if run.success() {
        problems.push("it exited 0");
    }
    if !run.stderr.contains("127.0.0.1:1") {
        problems.push("stderr does not name the database address 127.0.0.1:1");
    }
    if !run.stderr.contains("retrying") {
        problems.push("stderr shows no retry of the connection");
    }
    if run.elapsed >= Duration::from_secs(12) {
        problems.push("with 2 s of patience it must give up within ~10 s (bound 12 s)");
    }
    assert!(
        problems.is_empty(),
        "unreachable database: {}\n{}",
        problems.join("; "),
        run.describe()
    );
}
