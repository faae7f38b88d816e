use super::*;
use crate::timetable::DataInterval;
use chrono::TimeZone;
use serde_json::json;

pub(crate) struct TestKinds;

impl KindRegistry for TestKinds {
    fn kind_keys(&self, kind: &str) -> Option<KindKeys> {
        match kind {
            "shell" => Some(KindKeys {
                allowed: &["command", "env", "cwd"],
                required: &["command"],
            }),
            "sink" => Some(KindKeys {
                allowed: &["records", "id", "index"],
                required: &["records"],
            }),
            "noop" => Some(KindKeys {
                allowed: &[],
                required: &[],
            }),
            _ => None,
        }
    }
    fn kind_names(&self) -> Vec<&'static str> {
        vec!["shell", "noop", "sink"]
    }
    fn record_template_keys(&self, kind: &str) -> &'static [&'static str] {
        if kind == "sink" {
            &["id"]
        } else {
            &[]
        }
    }
}

fn parse(src: &str) -> Result<Dag, Vec<Diagnostic>> {
    parse_dag(src, Path::new("dags/t.toml"), &TestKinds)
}

fn ok(src: &str) -> Dag {
    match parse(src) {
        Ok(d) => d,
        Err(e) => panic!(
            "unexpected errors:\n{}",
            e.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// Diagnostics as "LINE:COL: message".
fn errs(src: &str) -> Vec<String> {
    match parse(src) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
            .collect(),
    }
}

fn assert_has(errors: &[String], expected: &str) {
    assert!(
        errors.iter().any(|e| e == expected),
        "missing `{expected}` in:\n{}",
        errors.join("\n")
    );
}

const FULL: &str = r#"[dag]
id = "steam_current_players"
description = "Current players per game"
schedule = "*/5 * * * *"
timezone = "Asia/Seoul"
start_date = 2024-08-01T00:00:00+09:00
end_date = 2025-01-01
catchup = false
max_active_runs = 1
max_active_tasks = 8
dagrun_timeout = "1h"
tags = ["steam", "games"]
is_paused_upon_creation = false

[defaults]
retries = 3
retry_delay = "10s"
env = { LANG = "C" }

[params]
games = { pubg = 578080, cs2 = 730 }

[tasks.extract]
kind = "shell"
command = "echo '{\"n\": 3}'"

[tasks.load]
kind = "shell"
upstream = ["extract"]
trigger_rule = "all_done"
retries = 2
retry_delay = "30s"
retry_backoff = "exponential"
max_retry_delay = "10m"
retry_jitter = false
timeout = "2m"
pool = "steam_api"
pool_slots = 2
priority_weight = 5
doc = "free text"
command = "echo {{ xcom.extract.n }} {{ params.games.pubg }} {{ ds }}"

[tasks.done]
kind = "noop"
upstream = ["load"]
"#;

#[test]
fn full_valid_dag() {
    let dag = ok(FULL);
    assert_eq!(dag.dag_id, "steam_current_players");
    assert_eq!(dag.description.as_deref(), Some("Current players per game"));
    assert_eq!(
        dag.schedule,
        Schedule::Cron {
            expr: "*/5 * * * *".into()
        }
    );
    assert_eq!(dag.timezone, chrono_tz::Asia::Seoul);
    assert_eq!(
        dag.start_date,
        Some(Utc.with_ymd_and_hms(2024, 7, 31, 15, 0, 0).unwrap())
    );
    // A local date is midnight in the DAG timezone.
    assert_eq!(
        dag.end_date,
        Some(Utc.with_ymd_and_hms(2024, 12, 31, 15, 0, 0).unwrap())
    );
    assert!(!dag.catchup);
    assert_eq!(dag.max_active_runs, 1);
    assert_eq!(dag.max_active_tasks, 8);
    assert_eq!(dag.dagrun_timeout_ms, Some(3_600_000));
    assert_eq!(dag.tags, vec!["steam", "games"]);
    assert_eq!(dag.is_paused_upon_creation, Some(false));
    assert_eq!(dag.params["games"], json!({"pubg": 578080, "cs2": 730}));
    assert_eq!(dag.fileloc, "dags/t.toml");
    assert_eq!(dag.source_hash.len(), 16);

    let extract = dag.task("extract").unwrap();
    assert_eq!(extract.kind, "shell");
    assert_eq!(extract.retry.retries, 3); // from [defaults]
    assert_eq!(extract.retry.retry_delay_ms, 10_000);
    assert_eq!(extract.retry.backoff, RetryBackoff::Fixed);
    assert_eq!(extract.retry.max_retry_delay_ms, 3_600_000);
    assert!(extract.retry.jitter);
    assert_eq!(extract.trigger_rule, TriggerRule::AllSuccess);
    assert_eq!(extract.pool, "default_pool");
    assert_eq!(extract.pool_slots, 1);
    assert_eq!(extract.priority_weight, 1);
    assert_eq!(extract.timeout_ms, None);
    assert_eq!(
        serde_json::Value::Object(extract.args.clone()),
        json!({"command": "echo '{\"n\": 3}'", "env": {"LANG": "C"}})
    );

    let load = dag.task("load").unwrap();
    assert_eq!(load.upstream, vec!["extract"]);
    assert_eq!(load.trigger_rule, TriggerRule::AllDone);
    assert_eq!(
        load.retry,
        RetryPolicy {
            retries: 2,
            retry_delay_ms: 30_000,
            backoff: RetryBackoff::Exponential,
            max_retry_delay_ms: 600_000,
            jitter: false
        }
    );
    assert_eq!(load.timeout_ms, Some(120_000));
    assert_eq!(load.pool, "steam_api");
    assert_eq!(load.pool_slots, 2);
    assert_eq!(load.priority_weight, 5);
    assert_eq!(load.doc.as_deref(), Some("free text"));

    // noop accepts no keys, so the `env` default is not applied to it.
    assert!(dag.task("done").unwrap().args.is_empty());
}

#[test]
fn topological_order_and_downstream() {
    let dag = ok(r#"
[dag]
id = "topo"

[tasks.report]
kind = "noop"
upstream = ["join"]

[tasks.join]
kind = "noop"
upstream = ["b", "a"]

[tasks.b]
kind = "noop"
upstream = ["root"]

[tasks.a]
kind = "noop"
upstream = ["root"]

[tasks.root]
kind = "noop"

[tasks.lonely]
kind = "noop"
"#);
    let order: Vec<&str> = dag.tasks.keys().map(String::as_str).collect();
    // Upstream first; among ready tasks, file order (b before a, root before lonely).
    assert_eq!(order, vec!["root", "b", "a", "join", "report", "lonely"]);
    assert_eq!(dag.downstream_of("root"), ["b", "a"]);
    assert_eq!(dag.downstream_of("b"), ["join"]);
    assert_eq!(dag.downstream_of("join"), ["report"]);
    assert!(dag.downstream_of("report").is_empty());
    assert!(dag.downstream_of("nope").is_empty());
    assert_eq!(dag.downstream.len(), 6);
    let roots: Vec<&str> = dag.roots().map(|t| t.task_id.as_str()).collect();
    assert_eq!(roots, vec!["root", "lonely"]);
    let leaves: Vec<&str> = dag.leaves().map(|t| t.task_id.as_str()).collect();
    assert_eq!(leaves, vec!["report", "lonely"]);
    assert_eq!(dag.schedule, Schedule::None);
    assert_eq!(dag.timezone, chrono_tz::UTC);
    assert_eq!(dag.max_active_runs, 16);
    assert_eq!(dag.max_active_tasks, 16);
}

#[test]
fn serde_round_trip() {
    let dag = ok(FULL);
    let json = serde_json::to_string(&dag).unwrap();
    let back: Dag = serde_json::from_str(&json).unwrap();
    assert_eq!(back, dag);
    // Task order (topological) survives too.
    assert_eq!(
        back.tasks.keys().collect::<Vec<_>>(),
        dag.tasks.keys().collect::<Vec<_>>()
    );
    for s in [
        Schedule::None,
        Schedule::Once,
        Schedule::Every { every_ms: 600_000 },
    ] {
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Schedule>(&j).unwrap(), s);
    }
}

#[test]
fn schedules_parse() {
    let cases = [
        (
            "@hourly",
            Schedule::Cron {
                expr: "0 * * * *".into(),
            },
        ),
        (
            "@daily",
            Schedule::Cron {
                expr: "0 0 * * *".into(),
            },
        ),
        (
            "@midnight",
            Schedule::Cron {
                expr: "0 0 * * *".into(),
            },
        ),
        (
            "@weekly",
            Schedule::Cron {
                expr: "0 0 * * 0".into(),
            },
        ),
        (
            "@monthly",
            Schedule::Cron {
                expr: "0 0 1 * *".into(),
            },
        ),
        (
            "@yearly",
            Schedule::Cron {
                expr: "0 0 1 1 *".into(),
            },
        ),
        (
            "@annually",
            Schedule::Cron {
                expr: "0 0 1 1 *".into(),
            },
        ),
        ("@once", Schedule::Once),
        ("every 10m", Schedule::Every { every_ms: 600_000 }),
        (
            "every 1h30m",
            Schedule::Every {
                every_ms: 5_400_000,
            },
        ),
        ("none", Schedule::None),
        ("@none", Schedule::None),
        (
            "30 * * * * *",
            Schedule::Cron {
                expr: "30 * * * * *".into(),
            },
        ),
    ];
    for (text, expected) in cases {
        let src = format!(
            "[dag]\nid = \"s\"\nschedule = \"{text}\"\nstart_date = 2024-01-01\n[tasks.a]\nkind = \"noop\"\n"
        );
        assert_eq!(ok(&src).schedule, expected, "{text}");
    }
}

#[test]
fn dates_in_every_accepted_form() {
    let cases = [
        (
            "2024-08-01T00:00:00+09:00",
            Utc.with_ymd_and_hms(2024, 7, 31, 15, 0, 0),
        ),
        (
            "2024-08-01T09:30:00",
            Utc.with_ymd_and_hms(2024, 8, 1, 0, 30, 0),
        ),
        ("2024-08-01", Utc.with_ymd_and_hms(2024, 7, 31, 15, 0, 0)),
        (
            "\"2024-08-01T00:00:00Z\"",
            Utc.with_ymd_and_hms(2024, 8, 1, 0, 0, 0),
        ),
        (
            "\"2024-08-01\"",
            Utc.with_ymd_and_hms(2024, 7, 31, 15, 0, 0),
        ),
    ];
    for (text, expected) in cases {
        let src = format!(
            "[dag]\nid = \"d\"\ntimezone = \"Asia/Seoul\"\nschedule = \"@daily\"\nstart_date = {text}\n"
        );
        assert_eq!(ok(&src).start_date, Some(expected.unwrap()), "{text}");
    }
}

#[test]
fn toml_syntax_error_has_position() {
    let e = errs("[dag]\nid = \"x\"\nschedule = \n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("3:"), "{e:?}");
    assert!(e[0].contains("TOML syntax error"), "{e:?}");

    let e = errs("[dag]\nid = \"x\"\nid = \"y\"\n");
    assert!(
        e[0].starts_with("3:1: TOML syntax error: duplicate key"),
        "{e:?}"
    );
}

#[test]
fn unknown_keys_everywhere_with_suggestions() {
    let e = errs(
        r#"[dag]
id = "x"
shedule = "@daily"

[defaults]
retires = 3

[tasks.a]
kind = "shell"
comand = "echo"
command = "echo"

[task.b]
kind = "noop"
"#,
    );
    assert_has(
        &e,
        "3:1: unknown key `shedule` in [dag]; did you mean `schedule`?",
    );
    assert_has(
        &e,
        "6:1: unknown key `retires` in [defaults]; did you mean `retries`?",
    );
    assert_has(
        &e,
        "10:1: unknown key `comand` in [tasks.a] (kind `shell`); did you mean `command`?",
    );
    assert_has(
        &e,
        "13:2: unknown key `task` at top level (expected [dag], [defaults], [params], [checkpoints], [tasks]); did you mean `tasks`?",
    );
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn wrong_value_types() {
    let e = errs(
        r#"[dag]
id = "x"
catchup = "yes"
max_active_runs = 0
tags = "a"

[tasks.a]
kind = "noop"
retries = "three"
retry_delay = "soon"
pool_slots = 0
retry_backoff = "linear"
trigger_rule = "all_sucess"
retry_jitter = 1
timeout = true
priority_weight = 1.5
"#,
    );
    assert_has(&e, "3:11: `catchup` must be true or false");
    assert_has(
        &e,
        "4:19: `max_active_runs` must be a positive integer (>= 1)",
    );
    assert_has(&e, "9:11: `retries` must be a non-negative integer");
    assert!(
        e.iter()
            .any(|m| m.starts_with("10:15: invalid duration `soon` for `retry_delay`")),
        "{e:?}"
    );
    assert_has(&e, "11:14: `pool_slots` must be a positive integer (>= 1)");
    assert_has(
        &e,
        "12:17: `retry_backoff` must be \"fixed\" or \"exponential\"",
    );
    assert_has(
        &e,
        "13:16: unknown trigger rule `all_sucess`; did you mean `all_success`?",
    );
    assert_has(&e, "14:16: `retry_jitter` must be true or false");
    assert_has(
        &e,
        "15:11: `timeout` must be a duration such as \"30s\", \"5m\" or \"1h30m\"",
    );
    assert_has(&e, "16:19: `priority_weight` must be an integer");
    // `tags = "a"` is accepted as a one-element list.
    assert_eq!(e.len(), 10, "{e:?}");
}

#[test]
fn dag_id_problems() {
    let e = errs("[dag]\ndescription = \"no id\"\n");
    assert_has(&e, "1:1: missing required key `id` in [dag]");

    let e = errs("[tasks.a]\nkind = \"noop\"\n");
    assert_has(&e, "1:1: missing [dag] table (it needs at least `id`)");

    let e = errs("[dag]\nid = \"bad id!\"\n");
    assert_has(
        &e,
        "2:6: dag id `bad id!` contains ` `; only letters, digits, `_`, `.` and `-` are allowed",
    );

    let long = "x".repeat(251);
    let e = errs(&format!("[dag]\nid = \"{long}\"\n"));
    assert!(
        e[0].starts_with("2:6: dag id `xxx") && e[0].ends_with("is longer than 250 characters")
    );
}

#[test]
fn kind_problems() {
    let e = errs(
        r#"[dag]
id = "x"

[tasks.a]
kind = "shel"
command = "ls"

[tasks.b]
kind = "shell"
cwd = "/tmp"

[tasks.c]
doc = "no kind"

[tasks.d]
kind = "docker"
"#,
    );
    assert_has(&e, "5:8: unknown task kind `shel`; did you mean `shell`?");
    assert_has(
        &e,
        "8:8: task `b` is missing required key `command` (kind `shell`)",
    );
    assert_has(
        &e,
        "12:8: task `c` has no `kind` (known kinds: shell, noop, sink)",
    );
    assert_has(
        &e,
        "16:8: unknown task kind `docker` (known kinds: shell, noop, sink)",
    );
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn defaults_apply_by_kind_and_task_wins() {
    let dag = ok(r#"[dag]
id = "x"

[defaults]
kind = "shell"
cwd = "/srv"
retries = 4
pool = "p"

[tasks.a]
command = "ls"

[tasks.b]
command = "ls"
cwd = "/tmp"
retries = 0

[tasks.c]
kind = "noop"
"#);
    let a = dag.task("a").unwrap();
    assert_eq!(a.kind, "shell");
    assert_eq!(a.args["cwd"], json!("/srv"));
    assert_eq!(a.retry.retries, 4);
    assert_eq!(a.pool, "p");
    let b = dag.task("b").unwrap();
    assert_eq!(b.args["cwd"], json!("/tmp"));
    assert_eq!(b.retry.retries, 0);
    let c = dag.task("c").unwrap();
    assert!(c.args.is_empty());
    assert_eq!(c.retry.retries, 4);

    // A required key can come from [defaults].
    ok("[dag]\nid = \"x\"\n[defaults]\ncommand = \"true\"\n[tasks.a]\nkind = \"shell\"\n");
}

#[test]
fn upstream_problems() {
    let e = errs(
        r#"[dag]
id = "x"

[tasks.extract]
kind = "noop"

[tasks.load]
kind = "noop"
upstream = ["extrct", "load"]
"#,
    );
    assert_has(
        &e,
        "9:13: unknown upstream task `extrct` in task `load`; did you mean `extract`?",
    );
    assert_has(&e, "9:23: task `load` lists itself in `upstream`");
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn cycles_name_every_task() {
    let e = errs(
        r#"[dag]
id = "x"

[tasks.a]
kind = "noop"
upstream = ["c"]

[tasks.b]
kind = "noop"
upstream = ["a"]

[tasks.c]
kind = "noop"
upstream = ["b"]

[tasks.d]
kind = "noop"
upstream = ["e"]

[tasks.e]
kind = "noop"
upstream = ["d"]
"#,
    );
    assert_has(&e, "6:13: cycle: a -> b -> c -> a");
    assert_has(&e, "18:13: cycle: d -> e -> d");
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn schedule_problems() {
    let e = errs(
        r#"[dag]
id = "x"
schedule = "0 0 30 2 *"
start_date = 2024-01-01
"#,
    );
    assert_has(
        &e,
        "3:12: cron expression `0 0 30 2 *` never fires (no fire time within 10 years of start_date)",
    );

    let e = errs("[dag]\nid = \"x\"\nschedule = \"61 * * * *\"\nstart_date = 2024-01-01\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("3:12: invalid cron expression `61 * * * *`: "),
        "{e:?}"
    );

    let e = errs("[dag]\nid = \"x\"\nschedule = \"* * *\"\nstart_date = 2024-01-01\n");
    assert!(e[0].contains("five or six fields"), "{e:?}");

    let e = errs("[dag]\nid = \"x\"\nschedule = \"@daly\"\nstart_date = 2024-01-01\n");
    assert_has(
        &e,
        "3:12: unknown schedule preset `@daly`; did you mean `@daily`?",
    );

    let e = errs("[dag]\nid = \"x\"\nschedule = \"@daily\"\n");
    assert_has(
        &e,
        "3:12: a scheduled DAG needs `start_date` in [dag] (or use schedule = \"none\")",
    );

    let e = errs("[dag]\nid = \"x\"\nschedule = \"every soon\"\nstart_date = 2024-01-01\n");
    assert!(
        e[0].starts_with("3:12: invalid interval `soon` in `schedule`"),
        "{e:?}"
    );
}

#[test]
fn timezone_and_date_problems() {
    let e = errs(
        r#"[dag]
id = "x"
timezone = "Asia/Seol"
schedule = "@daily"
start_date = 2024-06-01
end_date = 2024-01-01
dagrun_timeout = "forever"
"#,
    );
    assert_has(
        &e,
        "3:12: unknown timezone `Asia/Seol`; did you mean `Asia/Seoul`?",
    );
    assert_has(
        &e,
        "6:12: `end_date` (2024-01-01T00:00:00+00:00) is before `start_date` (2024-06-01T00:00:00+00:00)",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("7:18: invalid duration `forever` for `dagrun_timeout`")),
        "{e:?}"
    );

    let e = errs("[dag]\nid = \"x\"\nstart_date = \"yesterday\"\n");
    assert_has(
        &e,
        "3:14: `start_date` \"yesterday\" is not a date: use RFC 3339 (2024-08-01T00:00:00Z) or YYYY-MM-DD",
    );

    // A local time inside a DST gap does not exist.
    let e = errs(
        "[dag]\nid = \"x\"\ntimezone = \"America/New_York\"\nstart_date = 2024-03-10T02:30:00\n",
    );
    assert!(
        e[0].starts_with("4:14: `start_date` is invalid: `2024-03-10 02:30:00` does not exist"),
        "{e:?}"
    );
}

#[test]
fn template_syntax_errors_point_inside_the_string() {
    let e = errs(
        r#"[dag]
id = "x"

[tasks.a]
kind = "shell"
command = "echo {{ ds }"
env = { A = "ok", B = "{% if %}" }
"#,
    );
    assert_eq!(e.len(), 2, "{e:?}");
    // Line 6: `command = "echo {{ ds }"`, the error is inside the string (col > 11).
    assert!(e[0].starts_with("6:"), "{e:?}");
    let col: usize = e[0].split(':').nth(1).unwrap().parse().unwrap();
    assert!(col > 11 && col <= 25, "{e:?}");
    assert!(e[0].contains("template syntax error"), "{e:?}");
    assert!(e[1].starts_with("7:"), "{e:?}");
    let col: usize = e[1].split(':').nth(1).unwrap().parse().unwrap();
    assert!(col >= 24, "{e:?}");
}

#[test]
fn template_references_are_checked() {
    let e = errs(
        r#"[dag]
id = "x"

[tasks.extract]
kind = "shell"
command = "echo 1"

[tasks.side]
kind = "shell"
command = "echo 2"

[tasks.load]
kind = "shell"
upstream = ["extract"]
command = "echo {{ dss }} {{ xcom.extract.n }} {{ xcom.side }} {{ xcom.nope }}"
"#,
    );
    assert_has(
        &e,
        "15:20: unknown template variable `dss`; did you mean `ds`?",
    );
    assert_has(
        &e,
        "15:51: task load reads xcom.side but side is not upstream of it",
    );
    assert_has(
        &e,
        "15:67: template reads `xcom.nope` but there is no task `nope`",
    );
    assert_eq!(e.len(), 3, "{e:?}");

    // Transitive upstreams are fine, and so are loop variables and globals.
    ok(r#"[dag]
id = "x"
[tasks.a]
kind = "shell"
command = "echo 1"
[tasks.b]
kind = "noop"
upstream = ["a"]
[tasks.c]
kind = "shell"
upstream = ["b"]
command = "{% for i in range(3) %}{{ i }}{{ loop.index }}{% endfor %} {{ xcom.a | tojson }}"
"#);
}

#[test]
fn template_in_defaults_checked_per_task() {
    let e = errs(
        r#"[dag]
id = "x"

[defaults]
env = { X = "{{ xcom.a }}" }

[tasks.a]
kind = "shell"
command = "true"
"#,
    );
    assert_has(
        &e,
        "5:17: task a reads xcom.a but a is not upstream of it (from [defaults], in task `a`)",
    );
}

#[test]
fn many_errors_at_once_sorted_by_position() {
    let src = r#"[dag]
id = "x"
shedule = "@daily"
timezone = "Mars/Olympus"

[tasks.a]
kind = "shell"
retries = -1

[tasks.b]
kind = "noop"
upstream = ["zzz"]
"#;
    let diags = parse(src).unwrap_err();
    let e: Vec<String> = diags
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
        .collect();
    assert_eq!(
        e,
        vec![
            "3:1: unknown key `shedule` in [dag]; did you mean `schedule`?",
            "4:12: unknown timezone `Mars/Olympus`",
            "6:8: task `a` is missing required key `command` (kind `shell`)",
            "8:11: `retries` must be a non-negative integer",
            "12:13: unknown upstream task `zzz` in task `b`",
        ]
    );
    assert_eq!(
        diags[0].to_string(),
        "dags/t.toml:3:1: unknown key `shedule` in [dag]; did you mean `schedule`?"
    );
}

#[test]
fn load_folder_recursive_with_duplicates_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.toml"), "[dag]\nid = \"one\"\n").unwrap();
    std::fs::write(root.join("sub/b.toml"), "[dag]\nid = \"two\"\n").unwrap();
    std::fs::write(root.join("sub/c.toml"), "\n[dag]\nid = \"one\"\n").unwrap();
    std::fs::write(root.join("bad.toml"), "[dag\n").unwrap();
    std::fs::write(root.join("notes.txt"), "ignored").unwrap();

    let load = load_folder(root, &TestKinds);
    let ids: Vec<&str> = load.dags.iter().map(|d| d.dag_id.as_str()).collect();
    assert_eq!(ids, vec!["one", "two"]);
    assert_eq!(load.errors.len(), 2, "{:?}", load.errors);
    let dup = &load.errors[&root.join("sub/c.toml").display().to_string()];
    assert_eq!((dup[0].line, dup[0].col), (3, 6));
    assert!(dup[0].message.contains("already defined in"), "{dup:?}");
    assert!(load
        .errors
        .contains_key(&root.join("bad.toml").display().to_string()));

    let missing = load_folder(&root.join("nope"), &TestKinds);
    assert!(missing.dags.is_empty());
    assert_eq!(missing.errors.len(), 1);

    let e = load_file(&root.join("nope.toml"), &TestKinds).unwrap_err();
    assert_eq!((e[0].line, e[0].col), (1, 1));
    assert!(e[0].message.starts_with("cannot read file"));
}

#[test]
fn loaded_dag_schedules() {
    // End to end: a loaded DAG produces intervals in its timezone.
    let dag = ok(
        "[dag]\nid = \"x\"\nschedule = \"0 9 * * *\"\ntimezone = \"Asia/Seoul\"\nstart_date = 2024-08-01\n",
    );
    let ivs = dag.intervals_after(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(), 2);
    assert_eq!(
        ivs[0],
        DataInterval {
            start: Utc.with_ymd_and_hms(2024, 8, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2024, 8, 2, 0, 0, 0).unwrap(),
        }
    );
}

#[test]
fn documented_example_loads_and_renders() {
    // Keeps docs/dag-format.md honest: its complete example must load.
    let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dag-format.md");
    let Ok(text) = std::fs::read_to_string(doc) else {
        return;
    };
    let example = text
        .split("## Complete example")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("\n```").next())
        .expect("example block");
    let dag = ok(example);
    assert_eq!(
        dag.tasks.keys().collect::<Vec<_>>(),
        ["extract", "load", "report"]
    );
    let t = crate::Templates::new();
    let ctx = minijinja::Value::from_serialize(json!({
        "params": dag.params,
        "xcom": {"extract": {"578080": 1000}},
        "run_id": "r1",
        "ts_nodash": "20240801T000000",
    }));
    let extract = t
        .render_value(
            &serde_json::Value::Object(dag.task("extract").unwrap().args.clone()),
            &ctx,
        )
        .unwrap();
    // minijinja maps iterate in key order: cs2 (730) before pubg (578080).
    assert!(extract["command"]
        .as_str()
        .unwrap()
        .starts_with("for id in 730 578080 ; do"));
    let load = t
        .render_value(
            &serde_json::Value::Object(dag.task("load").unwrap().args.clone()),
            &ctx,
        )
        .unwrap();
    assert_eq!(load["env"]["PLAYERS"], json!("{\"578080\":1000}"));
}

#[test]
fn checkpoints_and_updates() {
    let dag = ok(r#"
[dag]
id = "cursor"

[checkpoints]
last_steam_id = 76561197960499900
label = "start"

[tasks.fetch]
kind = "shell"
command = "echo {{ checkpoint.last_steam_id }}"
checkpoint_update = { last_steam_id = "{{ result.max_id }}" }
"#);
    assert_eq!(
        dag.checkpoints["last_steam_id"],
        json!(76561197960499900i64)
    );
    assert_eq!(dag.checkpoints["label"], json!("start"));
    let t = dag.task("fetch").unwrap();
    assert_eq!(t.checkpoint_update["last_steam_id"], "{{ result.max_id }}");
}

#[test]
fn checkpoint_mistakes_are_located() {
    let e = errs(
        r#"
[dag]
id = "cursor"

[checkpoints]
last_id = 1
bad = [1, 2]
"9lives" = 3

[tasks.fetch]
kind = "shell"
command = "echo {{ checkpoint.last_ld }} {{ result }}"
checkpoint_update = { last_idd = "{{ result.max_id }}" }

[tasks.other]
kind = "shell"
command = "echo"
checkpoint_update = "{{ result }}"
"#,
    );
    assert_has(
        &e,
        "7:7: checkpoint `bad` must have a string, number or boolean initial value, not an array",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("8:1: checkpoint name `9lives` must start")),
        "{e:?}"
    );
    assert_has(
        &e,
        "12:20: template reads unknown checkpoint `last_ld`; did you mean `last_id`?",
    );
    assert_has(
        &e,
        "12:45: unknown template variable `result` (`result` exists only in `checkpoint_update` templates)",
    );
    assert_has(
        &e,
        "13:23: `checkpoint_update` names unknown checkpoint `last_idd`; did you mean `last_id`?",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("18:21: `checkpoint_update` must be a table")),
        "{e:?}"
    );
}

#[test]
fn mapped_tasks() {
    let dag = ok(r#"
[dag]
id = "mapped"

[tasks.ids]
kind = "shell"
command = "echo"

[tasks.each]
kind = "shell"
upstream = ["ids"]
map_over = "{{ xcom.ids }}"
map_concurrency = 4
command = "echo {{ item }}"

[tasks.literal]
kind = "shell"
map_over = ["a", "b"]
command = "echo {{ item }} {{ task.map_index }}"
"#);
    let each = dag.task("each").unwrap();
    assert_eq!(each.map_over, Some(json!("{{ xcom.ids }}")));
    assert_eq!(each.map_concurrency, Some(4));
    assert_eq!(
        dag.task("literal").unwrap().map_over,
        Some(json!(["a", "b"]))
    );
    assert_eq!(dag.task("ids").unwrap().map_over, None);
}

#[test]
fn mapping_mistakes_are_located() {
    let e = errs(
        r#"
[dag]
id = "mapped"

[defaults]
map_over = [1]

[tasks.plain]
kind = "shell"
command = "echo {{ item }}"
map_concurrency = 2

[tasks.self_ref]
kind = "shell"
map_over = "{{ item }}"
command = "echo"

[tasks.number]
kind = "shell"
map_over = 3
command = "echo"

[tasks.other]
kind = "shell"
map_over = "{{ xcom.plain }}"
command = "echo"
"#,
    );
    assert_has(
        &e,
        "6:1: `map_over` cannot be set in [defaults]; set it on each task",
    );
    assert_has(
        &e,
        "10:20: unknown template variable `item` (`item` exists only in tasks with `map_over`)",
    );
    assert_has(
        &e,
        "11:19: `map_concurrency` needs `map_over` (it caps the mapped instances running at once)",
    );
    assert!(
        e.iter().any(|m| m
            .starts_with("15:16: unknown template variable `item` (`item` is the current element")),
        "{e:?}"
    );
    assert_has(
        &e,
        "20:12: `map_over` must be a list or a template that renders to one, not an integer",
    );
    assert_has(
        &e,
        "25:16: task other reads xcom.plain but plain is not upstream of it",
    );
}

#[test]
fn record_is_allowed_only_in_per_record_keys() {
    ok(r#"
[dag]
id = "per_record"

[tasks.load]
kind = "sink"
records = [{ a = 1 }]
id = "{{ record.a }}-{{ ds_nodash }}"
"#);
    let e = errs(
        r#"
[dag]
id = "per_record"

[tasks.load]
kind = "sink"
records = [{ a = 1 }]
index = "i-{{ record.a }}"
"#,
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("8:15: unknown template variable `record` (`record` exists only in keys rendered once per record")),
        "{e:?}"
    );
}
