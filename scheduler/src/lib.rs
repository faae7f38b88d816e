//! Sluice's scheduler, local executor and command line, wired around the store.
//!
//! - `dagbag`: DAG folder → store (versions, import errors)
//! - `scheduler`: creates and starts runs from the database; fails timed-out runs and
//!   tries of dead workers
//! - `executor`: claims, runs and records task instances (the hot path)
//! - `context`: the template context of a try
//! - `local_run`: `dags test` / `tasks test`, runs outside any scheduler
//! - `bench`: the scheduler benchmark
//! - `cli`: the `sluice` command

pub mod bench;
pub mod checkpoints;
pub mod cli;
mod cli_credentials;
mod cli_fixtures;
pub mod config;
pub mod context;
pub mod credentials;
pub mod dagbag;
pub mod executor;
pub mod local_run;
pub mod scheduler;
pub mod web;

use std::sync::Arc;

use sluice_store::Store;
use sluice_tasks::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dagbag::DagProcessor;
use crate::executor::{Executor, ExecutorConfig};
use crate::scheduler::Scheduler;

/// Opens the configured store, retrying while it is unreachable, and migrates it.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let url = cfg.database_url();
    let store = Store::connect_with_retry(&url, cfg.scheduler.db_connect_patience()).await?;
    store.migrate().await?;
    Ok(store)
}

/// The executor's configuration, with connections and secrets resolved (a malformed
/// connection URI is an error here, at start, not in the middle of a run).
pub fn executor_config(cfg: &Config) -> anyhow::Result<ExecutorConfig> {
    let connections =
        sluice_tasks::Connections::load(&cfg.connections).map_err(anyhow::Error::msg)?;
    let secrets = sluice_tasks::Secrets::load(&cfg.secrets);
    checkpoints::Checkpoints::validate(&connections).map_err(anyhow::Error::msg)?;
    let vault = credentials::vault(cfg.fernet_key.as_deref()).map_err(anyhow::Error::msg)?;
    Ok(ExecutorConfig {
        connections,
        secrets,
        vault: vault.map(Arc::new),
        parallelism: cfg.parallelism,
        logs_dir: cfg.logs_dir(),
        artifacts_dir: cfg.artifacts_dir(),
        xcom_inline_max_bytes: cfg.xcom_inline_max_bytes,
        heartbeat_interval: cfg.scheduler.heartbeat_interval(),
        shutdown_grace: cfg.scheduler.shutdown_grace(),
        idle_poll: cfg.scheduler.loop_interval(),
    })
}

/// Scheduler and local executor in one process, until `shutdown` fires and running
/// tries have finished or been rescheduled.
pub async fn run_scheduler_and_executor(
    cfg: &Config,
    store: Store,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_scheduler_and_executor_woken(cfg, store, registry, shutdown, Wakers::default()).await
}

/// Notifies that wake the scheduler and the executor early (new runs, cleared tasks),
/// for a caller in the same process such as the REST API.
#[derive(Clone, Default)]
pub struct Wakers {
    pub scheduler: Arc<tokio::sync::Notify>,
    pub executor: Arc<tokio::sync::Notify>,
}

/// [`run_scheduler_and_executor`], woken by `wakers` too.
pub async fn run_scheduler_and_executor_woken(
    cfg: &Config,
    store: Store,
    registry: Registry,
    shutdown: CancellationToken,
    wakers: Wakers,
) -> anyhow::Result<()> {
    let mut executor = Executor::new(store.clone(), registry.clone(), executor_config(cfg)?);
    executor.wake = wakers.executor;
    executor.scheduler_wake = wakers.scheduler;
    let scheduler = Scheduler::new(
        store.clone(),
        DagProcessor::new(cfg.dags_folder.clone(), registry),
        cfg.scheduler.clone(),
        cfg.dags_paused_at_creation,
        executor.scheduler_wake.clone(),
        executor.wake.clone(),
    );
    let sched_stop = shutdown.clone();
    let sched = tokio::spawn(scheduler.run(sched_stop));
    let exec = tokio::spawn(executor.run(shutdown.clone()));
    let (s, e) = tokio::join!(sched, exec);
    s??;
    e??;
    Ok(())
}

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("received Ctrl-C"),
            _ = term.recv() => tracing::info!("received SIGTERM"),
        }
        t.cancel();
    });
    token
}

/// Shared, cheap handles a command needs.
#[derive(Clone)]
pub struct App {
    pub cfg: Arc<Config>,
    pub registry: Registry,
}
