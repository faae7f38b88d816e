//! `sluice dags test` and `sluice tasks test`: run a DAG or a task in-process, outside
//! any scheduler, to try a change before it is deployed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sluice_core::{Dag, DataInterval, TaskDef, Templates};
use sluice_store::{now, NewRun, RunType, Store};
use sluice_tasks::{Registry, TaskContext, TaskError, TryLog};
use tokio_util::sync::CancellationToken;

use crate::cli::{find_dag, parse_conf, parse_date, rfc3339, DagTestArgs};
use crate::config::Config;
use crate::context::{self, RunInfo};
use crate::executor::{ExecEvent, Executor};

/// The data interval a run at `logical` covers: the schedule's interval starting there,
/// else the instant itself.
fn interval_at(dag: &Dag, logical: DateTime<Utc>) -> DataInterval {
    dag.intervals_after(logical, 1)
        .into_iter()
        .find(|iv| iv.start == logical)
        .unwrap_or(DataInterval {
            start: logical,
            end: logical,
        })
}

/// Copies variables and pools from the configured store into the throwaway one, so a
/// test run sees the same configuration. The real store may be absent: then the test
/// runs without them.
async fn copy_configuration(cfg: &Config, to: &Store) {
    let url = cfg.database_url();
    if let Some(path) = url.strip_prefix("sqlite://") {
        // Opening a SQLite store creates it: don't leave one behind just for a test.
        if !std::path::Path::new(path.split('?').next().unwrap_or(path)).exists() {
            return;
        }
    }
    let from = match tokio::time::timeout(Duration::from_secs(5), Store::connect(&url)).await {
        Ok(Ok(s)) => s,
        _ => {
            tracing::warn!(
                "store {} not reachable: testing without its variables and pools",
                sluice_store::redact_url(&url)
            );
            return;
        }
    };
    if let Ok(vars) = from.variables().await {
        for v in vars {
            let _ = to
                .set_variable(&v.key, &v.value, v.description.as_deref())
                .await;
        }
    }
    if let Ok(pools) = from.pools().await {
        for p in pools {
            let _ = to
                .set_pool(&p.name, p.slots, p.description.as_deref())
                .await;
        }
    }
    // Copied still encrypted: the test run decrypts them with the same key.
    if let Ok(conns) = from.stored_connections().await {
        for c in conns {
            let _ = to
                .put_connection(
                    &c.conn_id,
                    &c.conn_type,
                    c.description.as_deref(),
                    &c.uri_encrypted,
                )
                .await;
        }
    }
    if let Ok(secrets) = from.stored_secrets().await {
        for s in secrets {
            let _ = to
                .put_secret(&s.name, &s.value_encrypted, s.description.as_deref())
                .await;
        }
    }
}

pub async fn dags_test(
    cfg: &Config,
    registry: &Registry,
    args: DagTestArgs,
) -> anyhow::Result<ExitCode> {
    let conf = parse_conf(args.conf.as_deref())?;
    let dag = find_dag(cfg, registry, &args.dag_id)?;
    let logical = match &args.date {
        Some(d) => parse_date(d, dag.timezone)?,
        None => now(),
    };
    let (_home, test_cfg, store) = scratch_home(cfg, "sluice-dags-test-").await?;
    copy_configuration(cfg, &store).await;
    let interval = interval_at(&dag, logical);
    let started = std::time::Instant::now();
    let run = run_to_completion(
        &store,
        registry,
        crate::executor_config(&test_cfg)?,
        &dag,
        NewRun::manual(
            &dag.dag_id,
            logical,
            Some((interval.start, interval.end)),
            conf,
        ),
    )
    .await?;
    let elapsed = started.elapsed();
    let final_run = store
        .run_by_pk(run.id)
        .await?
        .ok_or_else(|| anyhow!("the test run disappeared"))?;
    let tis = store.task_instances(run.id).await?;
    let succeeded = final_run.state == "success";
    if args.json {
        let out = json!({
            "dag_id": final_run.dag_id,
            "run_id": final_run.run_id,
            "state": final_run.state,
            "task_instances": tis.iter().map(|t| json!({
                "task_id": t.task_id,
                "map_index": t.map_index,
                "state": t.state_label(),
                "try_number": t.try_number,
                "duration_ms": t.duration_ms,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "DAG {} run {} (logical date {}) finished {} in {:.3}s",
            final_run.dag_id,
            final_run.run_id,
            rfc3339(final_run.logical_date),
            final_run.state,
            elapsed.as_secs_f64()
        );
        let mut rows = Vec::new();
        for t in &tis {
            rows.push(format!(
                "  {:<30} {:<16} try {:<3} {}",
                if t.map_index >= 0 {
                    format!("{}[{}]", t.task_id, t.map_index)
                } else {
                    t.task_id.clone()
                },
                t.state_label(),
                t.try_number,
                t.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default()
            ));
        }
        println!("{}", rows.join("\n"));
        for t in tis.iter().filter(|t| t.state.as_deref() == Some("failed")) {
            println!(
                "\n--- {} failed: {}",
                t.task_id,
                t.error.clone().unwrap_or_default()
            );
            let path = test_cfg.logs_dir().join(sluice_store::log_path(
                &t.dag_id,
                &t.run_id,
                &t.task_id,
                t.map_index,
                t.try_number,
            ));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                for l in &lines[lines.len().saturating_sub(20)..] {
                    println!("    {l}");
                }
            }
        }
    }
    store.close().await;
    Ok(if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A throwaway SLUICE_HOME with its own migrated SQLite store, so that `dags test` and
/// the crawl benchmark touch neither the user's store nor their logs. The directory
/// goes when the returned guard is dropped.
pub(crate) async fn scratch_home(
    cfg: &Config,
    prefix: &str,
) -> anyhow::Result<(tempfile::TempDir, Config, Store)> {
    let home = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let mut scratch = cfg.clone();
    scratch.home = home.path().to_path_buf();
    scratch.database_url = Some(format!(
        "sqlite://{}",
        home.path().join("sluice.db").display()
    ));
    let store = Store::connect(&scratch.database_url()).await?;
    store.migrate().await?;
    Ok((home, scratch, store))
}

/// Records `dag`, creates the run `new`, and runs it with an in-process executor until
/// it finishes (by its tries, or by its dagrun_timeout). Returns the run as recorded at
/// its start; read its final state from the store.
pub async fn run_to_completion(
    store: &Store,
    registry: &Registry,
    exec_cfg: crate::executor::ExecutorConfig,
    dag: &Dag,
    new: NewRun,
) -> anyhow::Result<sluice_store::RunRow> {
    store.sync_dag(dag, false).await?;
    let run = store
        .create_run(&new, "local")
        .await?
        .ok_or_else(|| anyhow!("a run {} of {} exists already", new.run_id, new.dag_id))?;
    let executor = Executor::new(store.clone(), registry.clone(), exec_cfg);
    let mut events = executor.events.subscribe();
    store.start_queued_runs(&dag.dag_id).await?;
    let stop = CancellationToken::new();
    let mut handle = tokio::spawn(executor.clone().run(stop.clone()));
    executor.wake.notify_one();
    loop {
        tokio::select! {
            // The executor stops early only on an error (such as unreadable credentials).
            done = &mut handle => {
                done??;
                return Err(anyhow!("the executor stopped before the run finished"));
            }
            ev = events.recv() => {
                if let Ok(ExecEvent::RunFinished { run_id, .. }) = ev {
                    if run_id == run.run_id {
                        break;
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                // Runs can also end by timing out, which no try reports.
                store.time_out_runs().await?;
                let state = store.run_by_pk(run.id).await?.map(|r| r.state);
                if matches!(state.as_deref(), Some("success" | "failed")) {
                    break;
                }
            }
        }
    }
    stop.cancel();
    handle.await??;
    Ok(run)
}

/// Runs one task with its templates rendered, no dependencies, nothing recorded.
pub async fn run_single_task(
    store: &Store,
    registry: &Registry,
    cfg: &Config,
    dag: &Dag,
    task: &TaskDef,
    logical: DateTime<Utc>,
    conf: &Value,
) -> anyhow::Result<ExitCode> {
    let kind = registry
        .get(&task.kind)
        .ok_or_else(|| anyhow!("unknown task kind {}", task.kind))?;
    let templates = Templates::new();
    let interval = interval_at(dag, logical);
    let run_id = RunType::Manual.run_id(logical);
    let raw = Value::Object(task.args.clone());
    let exec_cfg = crate::executor_config(cfg)?;
    let creds = crate::credentials::load(
        store,
        &exec_cfg.connections,
        &exec_cfg.secrets,
        exec_cfg.vault.as_deref(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let info = RunInfo {
        dag,
        task,
        run_pk: None,
        run_id: &run_id,
        run_type: "manual",
        logical_date: logical,
        data_interval_start: interval.start,
        data_interval_end: interval.end,
        conf,
        try_number: 1,
        map_index: -1,
        // `tasks test` runs one task alone: a mapped task runs for its first item.
        item: None,
        result: None,
        checkpoints: &creds.checkpoints,
    };
    let ctx = context::build(
        store,
        &templates,
        &cfg.artifacts_dir(),
        &creds.secrets,
        &info,
        &raw,
    )
    .await
    .map_err(|e| anyhow!("cannot render templates of {}: {e}", task.task_id))?;
    let args = match templates.render_value(&raw, &ctx)? {
        Value::Object(m) => m,
        _ => return Err(anyhow!("rendered arguments are not a table")),
    };
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("task.log");
    let log = TryLog::open_masked(&log_path, creds.masker.clone())
        .context("cannot create the task log")?;
    let tctx = TaskContext {
        run_id,
        map_index: -1,
        try_number: 1,
        log,
        conns: creds.connections.clone(),
        ..TaskContext::detached(&dag.dag_id, &task.task_id)
    };
    let fut = kind.run(&tctx, args);
    let result = match task.timeout_ms {
        Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), fut).await {
            Ok(r) => r,
            Err(_) => Err(TaskError::Failed(format!("timed out after {ms} ms"))),
        },
        None => fut.await,
    };
    print!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
    match result {
        Ok(v) => {
            // The value may hold a secret the task echoed: masked like the log.
            println!(
                "Task {} succeeded; XCom value: {}",
                task.task_id,
                creds.masker.mask(&v.to_string())
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "Task {} failed: {}",
                task.task_id,
                creds.masker.mask(&e.to_string())
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
