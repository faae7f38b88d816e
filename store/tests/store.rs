//! The store's scheduling transactions, on SQLite and on PostgreSQL (a fresh database
//! per test): run creation, claiming under caps and races, recording results with
//! trigger rules, retries, fencing, zombies, timeouts.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use chrono::{Duration, Utc};
use serde_json::json;
use sluice_core::loader::parse_dag;
use sluice_core::{Dag, KindKeys, KindRegistry};
use sluice_store::testing::TestDb;
use sluice_store::{
    now, Claimed, NewRun, Outcome, RunType, StateProposal, Store, TryIo, TryResult, XcomValue,
};

struct Kinds;

impl KindRegistry for Kinds {
    fn kind_keys(&self, kind: &str) -> Option<KindKeys> {
        match kind {
            "noop" => Some(KindKeys {
                allowed: &[],
                required: &[],
            }),
            "shell" => Some(KindKeys {
                allowed: &["command"],
                required: &["command"],
            }),
            _ => None,
        }
    }
    fn kind_names(&self) -> Vec<&'static str> {
        vec!["noop", "shell"]
    }
}

fn dag(src: &str) -> Dag {
    parse_dag(src, Path::new("test.toml"), &Kinds).unwrap_or_else(|d| panic!("bad test DAG: {d:?}"))
}

async fn manual_run(store: &Store, dag_id: &str, offset_s: i64) -> i64 {
    let t = now() - Duration::seconds(offset_s);
    store
        .create_run(&NewRun::manual(dag_id, t, None, json!({})), "test")
        .await
        .expect("create run")
        .expect("new run")
        .id
}

/// Records the DAG, creates a manual run and starts it.
async fn started(store: &Store, src: &str, dag_id: &str) -> i64 {
    store.sync_dag(&dag(src), false).await.expect("sync");
    let run = manual_run(store, dag_id, 0).await;
    store.start_queued_runs(dag_id).await.expect("start");
    run
}

fn result(c: &Claimed, outcome: Outcome) -> TryResult {
    TryResult {
        ti_id: c.ti_id,
        dag_run_id: c.dag_run_id,
        dag_version_id: c.dag_version_id,
        task_id: c.task_id.clone(),
        lease: c.lease.clone(),
        end: now(),
        outcome,
        io: TryIo::default(),
        proposals: Vec::new(),
        rendered: None,
    }
}

fn ok() -> Outcome {
    Outcome::Success(None)
}

fn fail(retryable: bool) -> Outcome {
    Outcome::Failed {
        error: "boom".into(),
        retryable,
    }
}

async fn states(store: &Store, run: i64) -> Vec<(String, String)> {
    store
        .task_instances(run)
        .await
        .expect("tis")
        .into_iter()
        .map(|t| (t.task_id.clone(), t.state_label().to_string()))
        .collect()
}

fn state_of<'a>(states: &'a [(String, String)], task: &str) -> &'a str {
    &states.iter().find(|(t, _)| t == task).expect("task").1
}

async fn claim_all(store: &Store, n: usize) -> Vec<Claimed> {
    store.register_worker("w1", "host", "test").await.ok();
    store.claim("w1", "host", n).await.expect("claim")
}

#[tokio::test]
async fn one_run_per_logical_date_even_when_raced() {
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        store
            .sync_dag(
                &dag("[dag]\nid = \"d\"\n[tasks.a]\nkind = \"noop\"\n"),
                false,
            )
            .await
            .expect("sync");
        let t = Utc::now() - Duration::hours(1);
        let t = sluice_store::now().min(t);
        let new = NewRun {
            dag_id: "d".into(),
            run_id: RunType::Scheduled.run_id(t),
            run_type: RunType::Scheduled,
            logical_date: t,
            data_interval_start: t,
            data_interval_end: t + Duration::hours(1),
            conf: json!({}),
        };
        let mut handles = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            let new = new.clone();
            handles.push(tokio::spawn(
                async move { store.create_run(&new, "race").await },
            ));
        }
        let mut created = 0;
        for h in handles {
            if h.await
                .expect("join")
                .expect("no error on conflict")
                .is_some()
            {
                created += 1;
            }
        }
        assert_eq!(created, 1, "{name}: exactly one run per logical date");
        assert_eq!(store.runs("d", 10).await.expect("runs").len(), 1, "{name}");
        db.cleanup().await;
    }
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_task_instance() {
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        let mut src = String::from("[dag]\nid = \"wide\"\nmax_active_tasks = 1000\n");
        for i in 0..300 {
            src.push_str(&format!("[tasks.t{i}]\nkind = \"noop\"\n"));
        }
        store.sync_dag(&dag(&src), false).await.expect("sync");
        // Claimed tries keep their slots: make room for all of them.
        store
            .set_pool("default_pool", 1000, None)
            .await
            .expect("pool");
        manual_run(store, "wide", 0).await;
        store.start_queued_runs("wide").await.expect("start");
        let mut handles = Vec::new();
        for w in 0..6 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let id = format!("worker{w}");
                store
                    .register_worker(&id, "host", "test")
                    .await
                    .expect("register");
                let mut mine = Vec::new();
                loop {
                    let batch = store.claim(&id, "host", 7).await.expect("claim");
                    if batch.is_empty() {
                        break;
                    }
                    mine.extend(batch.into_iter().map(|c| c.ti_id));
                }
                mine
            }));
        }
        let mut seen = HashSet::new();
        let mut total = 0;
        for h in handles {
            for id in h.await.expect("join") {
                total += 1;
                assert!(seen.insert(id), "{name}: task instance {id} claimed twice");
            }
        }
        assert_eq!(total, 300, "{name}: every task instance claimed once");
        db.cleanup().await;
    }
}

#[tokio::test]
async fn results_decide_downstream_by_trigger_rule_and_finish_the_run() {
    let src = r#"
[dag]
id = "rules"
[tasks.a]
kind = "noop"
[tasks.b]
kind = "noop"
[tasks.after_a]
kind = "noop"
upstream = ["a"]
[tasks.cleanup]
kind = "noop"
upstream = ["after_a", "b"]
trigger_rule = "all_done"
[tasks.alert]
kind = "noop"
upstream = ["a", "b"]
trigger_rule = "one_failed"
[tasks.skipped_later]
kind = "noop"
upstream = ["alert"]
[tasks.final]
kind = "noop"
upstream = ["cleanup", "skipped_later"]
trigger_rule = "none_failed_min_one_success"
"#;
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        store.sync_dag(&dag(src), false).await.expect("sync");
        let run = manual_run(store, "rules", 0).await;
        assert_eq!(
            store.start_queued_runs("rules").await.expect("start"),
            2,
            "{name}: roots scheduled"
        );
        let claimed = claim_all(store, 10).await;
        assert_eq!(claimed.len(), 2, "{name}");
        let results: Vec<TryResult> = claimed
            .iter()
            .map(|c| result(c, if c.task_id == "a" { fail(false) } else { ok() }))
            .collect();
        let report = store.finish(&results).await.expect("finish");
        let s = states(store, run).await;
        assert_eq!(state_of(&s, "a"), "failed", "{name}");
        assert_eq!(state_of(&s, "after_a"), "upstream_failed", "{name}");
        assert_eq!(
            state_of(&s, "cleanup"),
            "scheduled",
            "{name}: all_done runs after a failure"
        );
        assert_eq!(
            state_of(&s, "alert"),
            "scheduled",
            "{name}: one_failed fires"
        );
        assert_eq!(report.scheduled, 2, "{name}");
        // alert succeeds, cleanup succeeds; skipped_later waits on alert.
        let next = claim_all(store, 10).await;
        let results: Vec<TryResult> = next.iter().map(|c| result(c, ok())).collect();
        store.finish(&results).await.expect("finish");
        let next = claim_all(store, 10).await;
        assert_eq!(next.len(), 1, "{name}: skipped_later runs after alert");
        let report = store
            .finish(&next.iter().map(|c| result(c, ok())).collect::<Vec<_>>())
            .await
            .expect("finish");
        let last = claim_all(store, 10).await;
        assert_eq!(
            last.iter().map(|c| c.task_id.as_str()).collect::<Vec<_>>(),
            vec!["final"],
            "{name}"
        );
        assert!(report.runs_finished.is_empty(), "{name}");
        let report = store
            .finish(&last.iter().map(|c| result(c, ok())).collect::<Vec<_>>())
            .await
            .expect("finish");
        // The only leaf (final) succeeded, so the run succeeded despite a's failure.
        assert_eq!(report.runs_finished.len(), 1, "{name}");
        assert_eq!(report.runs_finished[0].2.as_str(), "success", "{name}");
        assert_eq!(
            store.run_by_pk(run).await.expect("run").expect("run").state,
            "success",
            "{name}"
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn failure_of_a_leaf_fails_the_run_and_skips_cascade() {
    let src = "[dag]\nid = \"f\"\n[tasks.a]\nkind = \"noop\"\n[tasks.b]\nkind = \"noop\"\nupstream = [\"a\"]\n[tasks.c]\nkind = \"noop\"\nupstream = [\"b\"]\n";
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        let run = started(store, src, "f").await;
        let c = claim_all(store, 5).await;
        let report = store
            .finish(&[result(&c[0], fail(true))])
            .await
            .expect("finish");
        let s = states(store, run).await;
        assert_eq!(state_of(&s, "a"), "failed", "{name}: no retries configured");
        assert_eq!(state_of(&s, "b"), "upstream_failed", "{name}");
        assert_eq!(state_of(&s, "c"), "upstream_failed", "{name}: cascades");
        assert_eq!(report.runs_finished[0].2.as_str(), "failed", "{name}");
        db.cleanup().await;
    }
}

#[tokio::test]
async fn retries_wait_for_their_delay_and_count_tries() {
    let src = "[dag]\nid = \"r\"\n[tasks.a]\nkind = \"noop\"\nretries = 2\nretry_delay = \"2s\"\n";
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        let run = started(store, src, "r").await;
        let c = claim_all(store, 5).await;
        assert_eq!(c[0].try_number, 1, "{name}");
        let report = store
            .finish(&[result(&c[0], fail(true))])
            .await
            .expect("finish");
        let at = report.next_retry_at.expect("a retry is due");
        assert!(
            at > now() + Duration::milliseconds(1500),
            "{name}: retry_delay honoured"
        );
        assert_eq!(
            state_of(&states(store, run).await, "a"),
            "up_for_retry",
            "{name}"
        );
        assert!(
            claim_all(store, 5).await.is_empty(),
            "{name}: not claimable before its time"
        );
        // Wait until the retry is due (bounded by the delay itself), then claim it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let retry = loop {
            let c = claim_all(store, 5).await;
            if !c.is_empty() {
                break c;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: retry never became claimable"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(retry[0].try_number, 2, "{name}");
        // A non-retryable failure ends it even with a retry left.
        store
            .finish(&[result(&retry[0], fail(false))])
            .await
            .expect("finish");
        assert_eq!(state_of(&states(store, run).await, "a"), "failed", "{name}");
        let ti = &store.task_instances(run).await.expect("tis")[0];
        let tries = store.tries(ti.id).await.expect("tries");
        assert_eq!(
            tries.iter().map(|t| t.state.as_str()).collect::<Vec<_>>(),
            vec!["up_for_retry", "failed"],
            "{name}: every try recorded"
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn pools_and_max_active_tasks_cap_claims() {
    let mut src = String::from("[dag]\nid = \"capped\"\nmax_active_tasks = 3\n");
    for i in 0..6 {
        src.push_str(&format!(
            "[tasks.p{i}]\nkind = \"noop\"\npool = \"small\"\n"
        ));
    }
    for i in 0..6 {
        src.push_str(&format!("[tasks.q{i}]\nkind = \"noop\"\n"));
    }
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        store
            .set_pool("small", 2, Some("two at a time"))
            .await
            .expect("pool");
        store.sync_dag(&dag(&src), false).await.expect("sync");
        manual_run(store, "capped", 0).await;
        store.start_queued_runs("capped").await.expect("start");
        let first = claim_all(store, 100).await;
        assert_eq!(first.len(), 3, "{name}: max_active_tasks = 3");
        let more = claim_all(store, 100).await;
        assert!(more.is_empty(), "{name}: cap holds across claims");
        store
            .finish(&first.iter().map(|c| result(c, ok())).collect::<Vec<_>>())
            .await
            .expect("finish");
        store.set_pool("small", 1, None).await.expect("pool");
        let mut running_small = 0;
        let mut done = 0;
        let mut active: Vec<Claimed> = Vec::new();
        loop {
            let batch = claim_all(store, 100).await;
            let small_now = active
                .iter()
                .chain(batch.iter())
                .filter(|c| c.pool == "small")
                .count();
            running_small = running_small.max(small_now);
            assert!(
                active.len() + batch.len() <= 3,
                "{name}: never more than 3 at once"
            );
            active.extend(batch);
            if active.is_empty() {
                break;
            }
            let c = active.remove(0);
            store.finish(&[result(&c, ok())]).await.expect("finish");
            done += 1;
        }
        assert_eq!(done + first.len(), 12, "{name}: everything ran");
        assert!(running_small <= 1, "{name}: pool of 1 slot respected");
        db.cleanup().await;
    }
}

#[tokio::test]
async fn unknown_pool_is_handed_out_flagged() {
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        store
            .sync_dag(
                &dag("[dag]\nid = \"p\"\n[tasks.a]\nkind = \"noop\"\npool = \"nope\"\n"),
                false,
            )
            .await
            .expect("sync");
        manual_run(store, "p", 0).await;
        store.start_queued_runs("p").await.expect("start");
        let c = claim_all(store, 5).await;
        assert_eq!(c.len(), 1, "{name}");
        assert!(
            c[0].pool_missing,
            "{name}: the worker is told the pool is missing"
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn max_active_runs_limits_started_runs() {
    let src = "[dag]\nid = \"m\"\nmax_active_runs = 1\n[tasks.a]\nkind = \"noop\"\n";
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        store.sync_dag(&dag(src), false).await.expect("sync");
        for i in 0..3 {
            manual_run(store, "m", 10 - i).await;
        }
        store.start_queued_runs("m").await.expect("start");
        let runs = store.runs("m", 10).await.expect("runs");
        let running: Vec<_> = runs.iter().filter(|r| r.state == "running").collect();
        assert_eq!(running.len(), 1, "{name}");
        assert_eq!(
            runs.iter().filter(|r| r.state == "queued").count(),
            2,
            "{name}"
        );
        // The oldest logical date starts first.
        assert_eq!(
            running[0].logical_date,
            runs.iter().map(|r| r.logical_date).min().expect("min"),
            "{name}"
        );
        let c = claim_all(store, 5).await;
        store.finish(&[result(&c[0], ok())]).await.expect("finish");
        store.start_queued_runs("m").await.expect("start");
        let runs = store.runs("m", 10).await.expect("runs");
        assert_eq!(
            runs.iter().filter(|r| r.state == "success").count(),
            1,
            "{name}"
        );
        assert_eq!(
            runs.iter().filter(|r| r.state == "running").count(),
            1,
            "{name}"
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn dead_workers_tries_are_retried_and_their_late_results_ignored() {
    let src = "[dag]\nid = \"z\"\n[tasks.a]\nkind = \"noop\"\nretries = 1\nretry_delay = \"0s\"\n";
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        let run = started(store, src, "z").await;
        store
            .register_worker("dead", "h1", "test")
            .await
            .expect("register");
        let c = store.claim("dead", "h1", 5).await.expect("claim");
        // Nobody is stale yet.
        let report = store
            .reap_zombies(now() - Duration::seconds(30))
            .await
            .expect("reap");
        assert_eq!(report.scheduled + report.stale as u64, 0, "{name}");
        assert_eq!(
            state_of(&states(store, run).await, "a"),
            "running",
            "{name}"
        );
        // The worker's heartbeat is now older than the threshold.
        let report = store
            .reap_zombies(now() + Duration::seconds(1))
            .await
            .expect("reap");
        assert!(
            report.next_retry_at.is_some(),
            "{name}: failed into its retry path"
        );
        let ti = &store.task_instances(run).await.expect("tis")[0];
        assert_eq!(ti.state.as_deref(), Some("up_for_retry"), "{name}");
        let tries = store.tries(ti.id).await.expect("tries");
        assert!(
            tries[0]
                .error
                .as_deref()
                .unwrap_or("")
                .contains("heartbeat"),
            "{name}: {:?}",
            tries[0].error
        );
        // The dead worker's late result is fenced off by its lease.
        let late = store.finish(&[result(&c[0], ok())]).await.expect("finish");
        assert_eq!(late.stale, 1, "{name}");
        assert_eq!(
            state_of(&states(store, run).await, "a"),
            "up_for_retry",
            "{name}"
        );
        // A live worker retries it.
        store
            .register_worker("alive", "h2", "test")
            .await
            .expect("register");
        let retry = store.claim("alive", "h2", 5).await.expect("claim");
        assert_eq!(retry[0].try_number, 2, "{name}");
        store
            .finish(&[result(&retry[0], ok())])
            .await
            .expect("finish");
        assert_eq!(
            store.run_by_pk(run).await.expect("run").expect("run").state,
            "success",
            "{name}"
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn interrupted_tries_run_again_without_using_a_retry() {
    let src = "[dag]\nid = \"i\"\n[tasks.a]\nkind = \"noop\"\n";
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        let run = started(store, src, "i").await;
        let c = claim_all(store, 5).await;
        store
            .finish(&[result(
                &c[0],
                Outcome::Interrupted {
                    reason: "shutdown".into(),
                },
            )])
            .await
            .expect("finish");
        assert_eq!(
            state_of(&states(store, run).await, "a"),
            "scheduled",
            "{name}"
        );
        let again = claim_all(store, 5).await;
        assert_eq!(again[0].try_number, 2, "{name}");
        assert_eq!(
            again[0].max_tries, 2,
            "{name}: the interrupted try did not use up the only try"
        );
        store
            .finish(&[result(&again[0], ok())])
            .await
            .expect("finish");
        assert_eq!(
            state_of(&states(store, run).await, "a"),
            "success",
            "{name}"
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn xcom_values_inline_and_spilled() {
    let src = "[dag]\nid = \"x\"\n[tasks.a]\nkind = \"noop\"\n[tasks.b]\nkind = \"noop\"\n";
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        let run = started(store, src, "x").await;
        let c = claim_all(store, 5).await;
        let results: Vec<TryResult> = c
            .iter()
            .map(|c| {
                let x = if c.task_id == "a" {
                    XcomValue::Inline(r#"{"n": 3}"#.into())
                } else {
                    XcomValue::Artifact {
                        path: "x/run/b.json".into(),
                        size: 123_456,
                    }
                };
                result(c, Outcome::Success(Some(x)))
            })
            .collect();
        store.finish(&results).await.expect("finish");
        let all = store.xcoms(run, None).await.expect("xcoms");
        assert_eq!(all.len(), 2, "{name}");
        let only_a = store
            .xcoms(run, Some(&["a".to_string()]))
            .await
            .expect("xcoms");
        assert_eq!(only_a.len(), 1, "{name}");
        assert_eq!(
            only_a[0].value,
            XcomValue::Inline(r#"{"n": 3}"#.into()),
            "{name}"
        );
        let b = all.iter().find(|r| r.task_id == "b").expect("b");
        assert_eq!(
            b.value,
            XcomValue::Artifact {
                path: "x/run/b.json".into(),
                size: 123_456
            },
            "{name}"
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn run_timeout_fails_the_run_and_takes_the_lease() {
    let src = "[dag]\nid = \"t\"\ndagrun_timeout = \"1s\"\n[tasks.a]\nkind = \"noop\"\n[tasks.b]\nkind = \"noop\"\nupstream = [\"a\"]\n";
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        let run = started(store, src, "t").await;
        let c = claim_all(store, 5).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if !store.time_out_runs().await.expect("timeouts").is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: run never timed out"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let s = states(store, run).await;
        assert_eq!(state_of(&s, "a"), "failed", "{name}");
        assert_eq!(state_of(&s, "b"), "skipped", "{name}");
        assert_eq!(
            store.run_by_pk(run).await.expect("run").expect("run").state,
            "failed",
            "{name}"
        );
        assert!(
            store.heartbeat("w1").await.expect("hb").is_empty(),
            "{name}: worker sees it lost the try"
        );
        let late = store.finish(&[result(&c[0], ok())]).await.expect("finish");
        assert_eq!(late.stale, 1, "{name}");
        db.cleanup().await;
    }
}

#[tokio::test]
async fn dag_versions_are_kept_and_bad_files_keep_their_dag_active() {
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        let v1 = store
            .sync_dag(
                &dag("[dag]\nid = \"v\"\n[tasks.a]\nkind = \"noop\"\n"),
                true,
            )
            .await
            .expect("sync");
        let again = store
            .sync_dag(
                &dag("[dag]\nid = \"v\"\n[tasks.a]\nkind = \"noop\"\n"),
                true,
            )
            .await
            .expect("sync");
        assert_eq!(v1, again, "{name}: same content, same version");
        let v2 = store
            .sync_dag(
                &dag("[dag]\nid = \"v\"\n[tasks.a]\nkind = \"noop\"\n[tasks.b]\nkind = \"noop\"\n"),
                true,
            )
            .await
            .expect("sync");
        assert_ne!(v1, v2, "{name}");
        let old: Arc<Dag> = store.dag_version(v1).await.expect("v1");
        assert_eq!(
            old.tasks.len(),
            1,
            "{name}: old version kept for runs pinned to it"
        );
        let row = store.dag("v").await.expect("dag").expect("row");
        assert!(row.is_paused, "{name}: paused at creation");
        // The file now fails to parse: the DAG stays active on its last good version.
        store
            .deactivate_missing(&[], &["test.toml".into()])
            .await
            .expect("deactivate");
        assert!(
            store.dag("v").await.expect("dag").expect("row").is_active,
            "{name}"
        );
        // The file is gone: inactive.
        store
            .deactivate_missing(&[], &[])
            .await
            .expect("deactivate");
        assert!(
            !store.dag("v").await.expect("dag").expect("row").is_active,
            "{name}"
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn proposed_state_commits_only_when_the_run_succeeds() {
    let src = "[dag]\nid = \"s\"\n[tasks.a]\nkind = \"noop\"\n[tasks.b]\nkind = \"noop\"\nupstream = [\"a\"]\n";
    for (name, db) in TestDb::both().await {
        let store = &db.store;
        let propose = |c: &Claimed, value: &str| {
            let mut r = result(c, ok());
            r.io = TryIo {
                records_in: 3,
                records_out: 2,
                bytes_in: 30,
                bytes_out: 20,
            };
            r.proposals = vec![StateProposal {
                namespace: "s.a".into(),
                key: "cursor".into(),
                value: value.into(),
            }];
            r
        };
        // Run 1: a proposes cursor=10, then b fails: nothing is committed.
        let run1 = started(store, src, "s").await;
        let a = claim_all(store, 5).await;
        store.finish(&[propose(&a[0], "10")]).await.expect("finish");
        let ti = &store.task_instances(run1).await.expect("tis")[0];
        let t = &store.tries(ti.id).await.expect("tries")[0];
        assert_eq!(
            (t.records_in, t.records_out, t.bytes_in, t.bytes_out),
            (Some(3), Some(2), Some(30), Some(20)),
            "{name}"
        );
        let b = claim_all(store, 5).await;
        store
            .finish(&[result(&b[0], fail(false))])
            .await
            .expect("finish");
        let keys = vec!["cursor".to_string()];
        assert!(
            store
                .state_get_many("s.a", &keys)
                .await
                .expect("state")
                .is_empty(),
            "{name}: failed run commits nothing"
        );
        // Run 2 succeeds: its proposal is committed.
        let run2 = manual_run(store, "s", 0).await;
        store.start_queued_runs("s").await.expect("start");
        let a = claim_all(store, 5).await;
        store.finish(&[propose(&a[0], "20")]).await.expect("finish");
        assert!(
            store
                .state_get_many("s.a", &keys)
                .await
                .expect("state")
                .is_empty(),
            "{name}: not before the run ends"
        );
        let b = claim_all(store, 5).await;
        store.finish(&[result(&b[0], ok())]).await.expect("finish");
        assert_eq!(
            store
                .run_by_pk(run2)
                .await
                .expect("run")
                .expect("row")
                .state,
            "success",
            "{name}"
        );
        let state = store.state_get_many("s.a", &keys).await.expect("state");
        assert_eq!(
            state.get("cursor").map(String::as_str),
            Some("20"),
            "{name}"
        );
        db.cleanup().await;
    }
}
