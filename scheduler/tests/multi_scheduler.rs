//! Two `sluice scheduler` processes on one PostgreSQL database: every interval gets
//! exactly one run and every task instance runs exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{parse_time, seconds_ago, wait_until, PgDb, Sandbox};

const INTERVALS: i64 = 6;
const TASKS: [&str; 3] = ["extract", "transform", "load"];

#[test]
fn two_schedulers_on_one_postgres_create_each_run_once_and_run_each_task_once() {
    let _serial = common::serial();
    // Declared first, so it is dropped last: the schedulers are killed before the
    // database is dropped.
    let pg = PgDb::new();
    let url = pg.url();
    let shared = tempfile::tempdir().expect("shared dir");
    let executions = shared.path().join("executions.log");

    let start = seconds_ago(INTERVALS * 3600 + 30);
    let mut dag = format!(
        r#"[dag]
id = "shared_hourly"
schedule = "every 1h"
start_date = {}
catchup = true

[defaults]
kind = "shell"
"#,
        common::rfc3339(start)
    );
    let mut previous: Option<&str> = None;
    for task in TASKS {
        dag.push_str(&format!("\n[tasks.{task}]\n"));
        if let Some(p) = previous {
            dag.push_str(&format!("upstream = [\"{p}\"]\n"));
        }
        // One line per execution, appended atomically by either scheduler's executor.
        dag.push_str(&format!(
            "command = \"sleep 0.2; echo \\\"{{{{ run_id }}}} {task} $SLUICE_TRY_NUMBER\\\" >> '{}'\"\n",
            executions.display()
        ));
        previous = Some(task);
    }

    let mut a = Sandbox::new();
    let mut b = Sandbox::new();
    for sb in [&mut a, &mut b] {
        sb.set_env("SLUICE_DATABASE_URL", &url);
        // Paused until both schedulers are up, so they really race for the same work;
        // few slots each, so neither executor can take all of it at once.
        sb.set_env("SLUICE_DAGS_PAUSED_AT_CREATION", "true");
        sb.set_env("SLUICE_PARALLELISM", "2");
        sb.write_dag("shared.toml", &dag);
    }
    let sched_a = a.spawn(&["scheduler"]);
    let sched_b = b.spawn(&["scheduler"]);
    for (name, s) in [("a", &sched_a), ("b", &sched_b)] {
        wait_until(
            &format!("scheduler {name} to load its DAG folder"),
            Duration::from_secs(30),
            &[s],
            || {
                let log = s.log();
                if log.contains("executor started") && log.contains("DAG folder loaded") {
                    Ok(())
                } else {
                    Err(log)
                }
            },
        );
    }
    assert!(
        a.runs("shared_hourly").expect("DAG recorded").is_empty(),
        "no run while the DAG is paused"
    );
    a.ok(&["dags", "unpause", "shared_hourly"]);

    let runs = a.wait_runs(
        "shared_hourly",
        "6 successful runs",
        Duration::from_secs(60),
        &[&sched_a, &sched_b],
        |runs| runs.len() >= INTERVALS as usize && runs.iter().all(|r| r["state"] == "success"),
    );
    // The other scheduler's view is the same database.
    let runs_b = b.runs("shared_hourly").expect("runs seen from b");
    assert_eq!(runs_b.len(), runs.len());

    assert_eq!(
        runs.len(),
        INTERVALS as usize,
        "no duplicate runs: {runs:#?}"
    );
    let dates: BTreeSet<_> = runs
        .iter()
        .map(|r| parse_time(&r["logical_date"]))
        .collect();
    assert_eq!(
        dates.len(),
        runs.len(),
        "one run per logical date: {runs:#?}"
    );
    let expected: BTreeSet<_> = (0..INTERVALS)
        .map(|i| start + chrono::Duration::hours(i))
        .collect();
    assert_eq!(
        dates, expected,
        "runs cover the consecutive intervals since start_date"
    );

    // Every task instance ran exactly once, per the store...
    let mut owners = BTreeSet::new();
    pg.rt.block_on(async {
        let store = pg.store();
        for r in &runs {
            let run_id = r["run_id"].as_str().expect("run_id");
            let run = store
                .run("shared_hourly", run_id)
                .await
                .expect("read run")
                .expect("run exists");
            let tis = store.task_instances(run.id).await.expect("task instances");
            let ids: Vec<&str> = tis.iter().map(|t| t.task_id.as_str()).collect();
            assert_eq!(ids.len(), TASKS.len(), "{run_id}: {ids:?}");
            for ti in &tis {
                assert_eq!(ti.state.as_deref(), Some("success"), "{ti:?}");
                assert_eq!(ti.try_number, 1, "ran more than once: {ti:?}");
                let tries = store.tries(ti.id).await.expect("tries");
                assert_eq!(tries.len(), 1, "{ti:?}: {tries:?}");
                owners.insert(tries[0].owner.clone());
            }
        }
    });

    // ...and per the commands themselves.
    let text = std::fs::read_to_string(&executions).expect("executions log");
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(run_id), Some(task), Some(try_number)) =
            (parts.next(), parts.next(), parts.next())
        else {
            panic!("bad execution line {line:?}");
        };
        assert_eq!(try_number, "1", "{line}");
        *seen
            .entry((run_id.to_string(), task.to_string()))
            .or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        INTERVALS as usize * TASKS.len(),
        "every task instance executed:\n{text}"
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "a task instance executed more than once:\n{text}"
    );
    eprintln!(
        "task instances were run by {} worker(s): {owners:?}",
        owners.len()
    );
}
