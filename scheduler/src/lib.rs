//! Sluice's scheduler, local executor and command line, wired around the store.
//!
//! - `dagbag`: DAG folder → store (versions, import errors)
//! - `scheduler`: creates and starts runs from the database; fails timed-out runs and
//!   tries of dead workers
//! - `executor`: claims, runs and records task instances (the hot path)
//! - `context`: the template context of a try
//! - `local_run`: `dags test` / `tasks test`, runs outside any scheduler
//! - `bench`: the scheduler benchmark
//! - `metrics`: Prometheus metrics, served at `/metrics`
//! - `cli`: the `sluice` command

pub mod bench;
mod bench_crawl;
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
pub mod metrics;
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
    let roles = Roles {
        wakers,
        ..Roles::default()
    };
    run_roles(cfg, store, registry, shutdown, roles).await
}

/// Which loops a process runs, and what they share.
#[derive(Clone)]
pub struct Roles {
    /// Creates and starts runs, times them out, reaps dead workers' tries.
    pub scheduler: bool,
    /// Claims and runs task instances (`sluice worker` runs only this).
    pub executor: bool,
    pub wakers: Wakers,
    pub metrics: Arc<metrics::Metrics>,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            scheduler: true,
            executor: true,
            wakers: Wakers::default(),
            metrics: Arc::default(),
        }
    }
}

/// Runs the loops `roles` asks for until `shutdown` fires and running tries have
/// finished or been rescheduled.
pub async fn run_roles(
    cfg: &Config,
    store: Store,
    registry: Registry,
    shutdown: CancellationToken,
    roles: Roles,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        roles.scheduler || roles.executor,
        "nothing to run: neither the scheduler nor an executor"
    );
    let exec = if roles.executor {
        let mut executor = Executor::new(store.clone(), registry.clone(), executor_config(cfg)?);
        executor.wake = roles.wakers.executor.clone();
        executor.scheduler_wake = roles.wakers.scheduler.clone();
        executor.metrics = roles.metrics.clone();
        Some(tokio::spawn(executor.run(shutdown.clone())))
    } else {
        None
    };
    let sched = if roles.scheduler {
        let mut scheduler = Scheduler::new(
            store.clone(),
            DagProcessor::new(cfg.dags_folder.clone(), registry),
            cfg.scheduler.clone(),
            cfg.dags_paused_at_creation,
            roles.wakers.scheduler.clone(),
            roles.wakers.executor.clone(),
        );
        scheduler.metrics = roles.metrics.clone();
        Some(tokio::spawn(scheduler.run(shutdown.clone())))
    } else {
        None
    };
    // Both are awaited before either's error is returned, as the process must not
    // exit with tries still running.
    let s = match sched {
        Some(h) => h.await?,
        None => Ok(()),
    };
    let e = match exec {
        Some(h) => h.await?,
        None => Ok(()),
    };
    s?;
    e
}

/// Wakes `wake` whenever another process notifies new work (PostgreSQL LISTEN/NOTIFY),
/// until `stop` fires. Without a listener (SQLite) the loops just poll.
pub(crate) async fn forward_wakeups(
    store: Store,
    wake: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    who: &'static str,
) {
    let mut listener = match store.work_listener().await {
        Ok(Some(l)) => l,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("{who}: cannot listen for work notifications ({e}); polling only");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.recv() => match r {
                Ok(()) => wake.notify_one(),
                Err(e) => {
                    // The listener reconnects on the next recv; meanwhile the loop polls.
                    tracing::warn!("{who}: work notifications interrupted: {e}");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

/// Notifies other processes of new work without holding up the caller.
pub(crate) fn notify_work_soon(store: &Store) {
    let store = store.clone();
    tokio::spawn(async move {
        if let Err(e) = store.notify_work().await {
            tracing::debug!("cannot notify other processes of new work: {e}");
        }
    });
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
