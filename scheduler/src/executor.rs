//! The local executor: claims runnable task instances from the store, runs them
//! concurrently up to `parallelism`, and records their results in batches.
//!
//! One loop does both halves so the hot path is short: a result is recorded (which
//! schedules its downstream in the same transaction) and the loop claims again at
//! once, without waiting for a timer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_core::Templates;
use sluice_store::{
    now, Claimed, Outcome, RunState, StateProposal, Store, TryIo, TryResult, XcomValue,
};
use sluice_tasks::{
    Connections, Registry, Secrets, StateBackend, TaskContext, TaskError, TaskState, TryLog,
    TryMetrics,
};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::checkpoints;
use crate::context::{self, RunInfo};
use crate::credentials::{self, Credentials};
use crate::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// From the environment and sluice.toml; the store's are added at start.
    pub connections: Connections,
    pub secrets: Secrets,
    /// Decrypts stored connections and secrets (the operator's Fernet key).
    pub vault: Option<Arc<sluice_tasks::Vault>>,
    pub parallelism: usize,
    pub logs_dir: PathBuf,
    pub artifacts_dir: PathBuf,
    pub xcom_inline_max_bytes: usize,
    pub heartbeat_interval: Duration,
    pub shutdown_grace: Duration,
    /// Longest sleep when idle; wake-ups normally come sooner.
    pub idle_poll: Duration,
}

/// Something the executor did that others may wait for.
#[derive(Clone, Debug)]
pub enum ExecEvent {
    RunFinished {
        dag_id: String,
        run_id: String,
        state: RunState,
    },
}

/// Airflow's `max_map_length`: more mapped instances than this is a mistake.
const MAX_MAP_LENGTH: usize = 10_000;

const CANCEL_NONE: u8 = 0;
const CANCEL_SHUTDOWN: u8 = 1;
const CANCEL_LEASE_LOST: u8 = 2;

struct RunningTry {
    lease: String,
    claimed_at: std::time::Instant,
    cancel: CancellationToken,
    reason: Arc<AtomicU8>,
}

#[derive(Clone)]
pub struct Executor {
    store: Store,
    registry: Registry,
    templates: Arc<Templates>,
    cfg: ExecutorConfig,
    worker_id: String,
    hostname: String,
    /// Wakes the loop: new work may be claimable.
    pub wake: Arc<Notify>,
    /// Wakes the scheduler: a run finished, so a queued run may start.
    pub scheduler_wake: Arc<Notify>,
    pub events: broadcast::Sender<ExecEvent>,
    /// Where tries, their durations and records are counted (served at `/metrics`).
    pub metrics: Arc<Metrics>,
    running: Arc<Mutex<HashMap<i64, RunningTry>>>,
    /// Hides secret values and connection passwords in logs and stored errors.
    /// Connections, secrets, their masker and the checkpoint store: swapped whole when
    /// stored credentials change.
    credentials: Arc<RwLock<Arc<Credentials>>>,
    credentials_stamp: Arc<tokio::sync::Mutex<Option<String>>>,
}

/// Task state read from the metadata store.
struct StoreState(Store);

#[async_trait::async_trait]
impl StateBackend for StoreState {
    async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, String>, String> {
        self.0
            .state_get_many(namespace, keys)
            .await
            .map_err(|e| e.to_string())
    }
}

/// What a finished try hands back besides its outcome.
struct TryOutput {
    outcome: Outcome,
    io: TryIo,
    proposals: Vec<StateProposal>,
    /// The task's kind and what it counted, for the process metrics.
    kind: String,
    counted: sluice_tasks::MetricsSnapshot,
    rendered: Option<String>,
}

/// What `execute` learns on the way besides the outcome.
#[derive(Default)]
struct TrySide {
    /// The task's kind, once its DAG version is loaded (for the metrics' label).
    kind: Option<String>,
    checkpoint_proposals: Vec<StateProposal>,
    /// The rendered arguments (secrets masked), when any was a template.
    rendered: Option<String>,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Executor {
    pub fn new(store: Store, registry: Registry, cfg: ExecutorConfig) -> Executor {
        let (events, _) = broadcast::channel(1024);
        let hostname = hostname();
        let credentials = Credentials::new(&store, cfg.connections.clone(), cfg.secrets.clone());
        Executor {
            credentials: Arc::new(RwLock::new(Arc::new(credentials))),
            credentials_stamp: Arc::default(),
            store,
            registry,
            templates: Arc::new(Templates::new()),
            worker_id: format!(
                "{hostname}-{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            hostname,
            cfg,
            wake: Arc::new(Notify::new()),
            scheduler_wake: Arc::new(Notify::new()),
            events,
            metrics: Arc::default(),
            running: Arc::default(),
        }
    }

    /// The current credentials (cheap: an `Arc` clone).
    fn credentials(&self) -> Arc<Credentials> {
        self.credentials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads stored connections and secrets when they changed since the last load
    /// (one cheap query otherwise). A failure keeps the current set.
    async fn reload_credentials(&self) -> Result<(), String> {
        let stamp = self
            .store
            .credentials_stamp()
            .await
            .map_err(|e| format!("cannot read stored credentials: {e}"))?;
        let mut last = self.credentials_stamp.lock().await;
        if last.as_deref() == Some(stamp.as_str()) {
            return Ok(());
        }
        let loaded = credentials::load(
            &self.store,
            &self.cfg.connections,
            &self.cfg.secrets,
            self.cfg.vault.as_deref(),
        )
        .await?;
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        if last.is_some() {
            tracing::info!("stored connections or secrets changed: reloaded");
        }
        *last = Some(stamp);
        Ok(())
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Runs until `shutdown` fires; then stops claiming, lets running tries finish
    /// within the grace period, stops the rest and reschedules them.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.store
            .register_worker(&self.worker_id, &self.hostname, "executor")
            .await?;
        tracing::info!(worker = %self.worker_id, parallelism = self.cfg.parallelism, "executor started");
        self.metrics.set_parallelism(self.cfg.parallelism);
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(self.clone().heartbeat_loop(heartbeat_stop.clone()));
        tokio::spawn(crate::forward_wakeups(
            self.store.clone(),
            self.wake.clone(),
            heartbeat_stop.clone(),
            "executor",
        ));
        // Checkpoints a crashed process committed but never wrote to Redis.
        // Stored connections and secrets must be readable before anything runs.
        self.reload_credentials()
            .await
            .map_err(anyhow::Error::msg)?;
        let checkpoints = self.credentials().checkpoints.clone();
        tokio::spawn(async move {
            if let Err(e) = checkpoints.flush().await {
                tracing::warn!("cannot write queued checkpoints: {e}");
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel::<TryResult>();
        let mut pending: Vec<TryResult> = Vec::new();
        let mut shutting_down = false;
        let mut grace_deadline = tokio::time::Instant::now();
        let mut next_retry: Option<DateTime<Utc>> = None;
        let mut db_backoff = Duration::from_millis(100);
        loop {
            while let Ok(r) = rx.try_recv() {
                pending.push(r);
            }
            // Record results first: that is what schedules the next tasks.
            if !pending.is_empty() {
                match self.store.finish(&pending).await {
                    Ok(report) => {
                        let free_now = {
                            let mut running = self.running.lock().expect("running map");
                            for r in &pending {
                                running.remove(&r.ti_id);
                            }
                            self.cfg.parallelism.saturating_sub(running.len())
                        };
                        // Others may take what this executor has no slots for, and a
                        // scheduler elsewhere may start the next queued run.
                        if report.scheduled as usize > free_now || !report.runs_finished.is_empty()
                        {
                            crate::notify_work_soon(&self.store);
                        }
                        pending.clear();
                        db_backoff = Duration::from_millis(100);
                        if report.stale > 0 {
                            tracing::warn!(
                                count = report.stale,
                                "ignored results of tries this worker no longer owned"
                            );
                        }
                        if let Some(at) = report.next_retry_at {
                            next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                        }
                        if !report.runs_finished.is_empty() {
                            self.scheduler_wake.notify_one();
                            let succeeded = report
                                .runs_finished
                                .iter()
                                .any(|(_, _, s)| *s == RunState::Success);
                            let this = self.clone();
                            // Off the hot loop: committed checkpoints go to Redis before
                            // anyone hears the run finished (a slow Redis delays only
                            // that news, never the next tries).
                            tokio::spawn(async move {
                                if succeeded {
                                    if let Err(e) = this.credentials().checkpoints.flush().await {
                                        tracing::error!("cannot write checkpoints: {e}; they stay queued in the store and are written on the next read or flush");
                                    }
                                }
                                for (dag_id, run_id, state) in report.runs_finished {
                                    tracing::info!(%dag_id, %run_id, %state, "DAG run finished");
                                    this.metrics.run_finished(&dag_id, state);
                                    let _ = this.events.send(ExecEvent::RunFinished {
                                        dag_id,
                                        run_id,
                                        state,
                                    });
                                }
                            });
                        }
                    }
                    Err(e) => {
                        // Results are kept and recorded once the database is back.
                        tracing::error!(
                            "cannot record {} try results: {e}; retrying in {:?}",
                            pending.len(),
                            db_backoff
                        );
                        tokio::time::sleep(db_backoff).await;
                        db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            // Results that arrived while recording: their slots are free already.
            while let Ok(r) = rx.try_recv() {
                pending.push(r);
            }
            let running_count = self.running.lock().expect("running map").len();
            if shutting_down && running_count == 0 && pending.is_empty() {
                break;
            }
            let busy = running_count.saturating_sub(pending.len());
            let free = self.cfg.parallelism.saturating_sub(busy);
            if !shutting_down && free > 0 {
                match self
                    .store
                    .claim(&self.worker_id, &self.hostname, free)
                    .await
                {
                    Ok(claimed) => {
                        if next_retry.is_some_and(|t| t <= now()) {
                            next_retry = None;
                        }
                        for c in claimed {
                            self.spawn_try(c, tx.clone());
                        }
                    }
                    Err(e) => {
                        tracing::error!("cannot claim task instances: {e}");
                        tokio::time::sleep(db_backoff).await;
                        db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            if !pending.is_empty() {
                continue;
            }
            let sleep_for = match next_retry {
                Some(at) => (at - now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(self.cfg.idle_poll),
                None => self.cfg.idle_poll,
            };
            tokio::select! {
                r = rx.recv() => {
                    if let Some(r) = r {
                        pending.push(r);
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep_for) => {}
                _ = shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    grace_deadline = tokio::time::Instant::now() + self.cfg.shutdown_grace;
                    let n = self.running.lock().expect("running map").len();
                    tracing::info!("shutting down: no new tries; waiting up to {:?} for {n} running", self.cfg.shutdown_grace);
                }
                _ = tokio::time::sleep_until(grace_deadline), if shutting_down => {
                    let running = self.running.lock().expect("running map");
                    if !running.is_empty() {
                        tracing::warn!("grace period over: stopping {} tries; they will run again", running.len());
                    }
                    for t in running.values() {
                        t.reason.store(CANCEL_SHUTDOWN, Ordering::SeqCst);
                        t.cancel.cancel();
                    }
                    grace_deadline += Duration::from_secs(3600);
                }
            }
        }
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        self.store.stop_worker(&self.worker_id).await?;
        tracing::info!(worker = %self.worker_id, "executor stopped");
        Ok(())
    }

    /// Proves the worker alive and stops local tries the store no longer gives it.
    async fn heartbeat_loop(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.heartbeat_interval) => {}
            }
            let asked_at = std::time::Instant::now();
            match self.store.heartbeat(&self.worker_id).await {
                Ok(owned) => {
                    let owned: HashMap<i64, String> = owned.into_iter().collect();
                    let running = self.running.lock().expect("running map");
                    for (ti_id, t) in running.iter() {
                        // Only tries claimed before the heartbeat read can be judged; a
                        // missing or different lease means another party took the try.
                        if t.claimed_at < asked_at
                            && owned.get(ti_id) != Some(&t.lease)
                            && !t.cancel.is_cancelled()
                        {
                            tracing::warn!(ti_id, "try no longer owned by this worker (timed out, cleared or failed as a zombie): stopping it");
                            t.reason.store(CANCEL_LEASE_LOST, Ordering::SeqCst);
                            t.cancel.cancel();
                        }
                    }
                }
                Err(e) => tracing::error!("heartbeat failed: {e}"),
            }
            if let Err(e) = self.reload_credentials().await {
                tracing::error!("{e}; keeping the credentials loaded before");
            }
        }
    }

    fn spawn_try(&self, c: Claimed, results: mpsc::UnboundedSender<TryResult>) {
        let cancel = CancellationToken::new();
        let reason = Arc::new(AtomicU8::new(CANCEL_NONE));
        self.running.lock().expect("running map").insert(
            c.ti_id,
            RunningTry {
                lease: c.lease.clone(),
                claimed_at: std::time::Instant::now(),
                cancel: cancel.clone(),
                reason: reason.clone(),
            },
        );
        let this = self.clone();
        self.metrics.try_started();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let retries_left = c.try_number < c.max_tries;
            let dag_id = c.dag_id.clone();
            let ti_id = c.ti_id;
            let dag_run_id = c.dag_run_id;
            let dag_version_id = c.dag_version_id;
            let task_id = c.task_id.clone();
            let lease = c.lease.clone();
            // A panic inside a task kind must still produce a result, or the task
            // instance would stay running until the zombie reaper found it.
            let output = match tokio::spawn(this.clone().run_try(c, cancel, reason)).await {
                Ok(output) => output,
                Err(e) => TryOutput {
                    outcome: Outcome::Failed {
                        error: format!("the task crashed: {e}"),
                        retryable: true,
                    },
                    io: TryIo::default(),
                    proposals: Vec::new(),
                    kind: "unknown".into(),
                    counted: Default::default(),
                    rendered: None,
                },
            };
            this.metrics.record_try(
                &dag_id,
                &output.kind,
                &output.outcome,
                retries_left
                    && matches!(
                        output.outcome,
                        Outcome::Failed {
                            retryable: true,
                            ..
                        }
                    ),
                started.elapsed(),
                &output.counted,
            );
            this.metrics.try_ended();
            let _ = results.send(TryResult {
                ti_id,
                dag_run_id,
                dag_version_id,
                task_id,
                lease,
                end: now(),
                outcome: output.outcome,
                io: output.io,
                proposals: output.proposals,
                rendered: output.rendered,
            });
            this.wake.notify_one();
        });
    }

    async fn run_try(
        self,
        c: Claimed,
        cancel: CancellationToken,
        reason: Arc<AtomicU8>,
    ) -> TryOutput {
        let log_file = self.cfg.logs_dir.join(&c.log_path);
        let log =
            TryLog::open_masked(&log_file, self.credentials().masker.clone()).unwrap_or_else(|e| {
                tracing::warn!(path = %log_file.display(), "cannot open task log: {e}");
                TryLog::discard()
            });
        log.info(&format!(
            "try {} of {} of {}.{} in run {} on worker {}",
            c.try_number, c.max_tries, c.dag_id, c.task_id, c.run_id, self.worker_id
        ));
        let state = Arc::new(TaskState::new(
            Arc::new(StoreState(self.store.clone())),
            format!("{}.{}", c.dag_id, c.task_id),
        ));
        let metrics = TryMetrics::default();
        let mut side = TrySide::default();
        let outcome = match self
            .execute(
                &c,
                &log,
                cancel,
                &reason,
                (state.clone(), metrics.clone()),
                &mut side,
            )
            .await
        {
            // Errors are stored and shown: keep secrets out of them.
            Outcome::Failed { error, retryable } => Outcome::Failed {
                error: self.credentials().masker.mask(&error),
                retryable,
            },
            other => other,
        };
        match &outcome {
            Outcome::Success(_) => log.info("task succeeded"),
            Outcome::Failed { error, retryable } => log.error(&format!(
                "task failed{}: {error}",
                if *retryable { "" } else { " (not retryable)" }
            )),
            Outcome::Interrupted { reason } => log.warn(&format!("try interrupted: {reason}")),
            Outcome::Expand { items, .. } => log.info(&format!(
                "mapped over {} item{}: {}",
                items.len(),
                if items.len() == 1 { "" } else { "s" },
                if items.is_empty() {
                    "nothing to run, the task is skipped".to_string()
                } else {
                    format!("task instances {}[0..{}] scheduled", c.task_id, items.len())
                }
            )),
        }
        let m = metrics.snapshot();
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let proposals = if matches!(outcome, Outcome::Success(_)) {
            state
                .take_proposals()
                .into_iter()
                .map(|(key, value)| StateProposal {
                    namespace: state.namespace().to_string(),
                    key,
                    value,
                })
                .chain(side.checkpoint_proposals)
                .collect()
        } else {
            Vec::new()
        };
        TryOutput {
            outcome,
            io: TryIo {
                records_in: as_i64(m.records_in),
                records_out: as_i64(m.records_out),
                bytes_in: as_i64(m.bytes_in),
                bytes_out: as_i64(m.bytes_out),
            },
            proposals,
            kind: side.kind.unwrap_or_else(|| "unknown".to_string()),
            counted: m,
            rendered: side.rendered,
        }
    }

    async fn execute(
        &self,
        c: &Claimed,
        log: &TryLog,
        cancel: CancellationToken,
        reason: &AtomicU8,
        (state, metrics): (Arc<TaskState>, TryMetrics),
        side: &mut TrySide,
    ) -> Outcome {
        let creds = self.credentials();
        let fatal = |error: String| Outcome::Failed {
            error,
            retryable: false,
        };
        let dag = match self.store.dag_version(c.dag_version_id).await {
            Ok(d) => d,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("cannot load DAG version {}: {e}", c.dag_version_id),
                    retryable: true,
                }
            }
        };
        side.kind = dag.task(&c.task_id).map(|t| t.kind.clone());
        if c.pool_missing {
            return fatal(format!(
                "pool `{}` does not exist; create it (`sluice pools set {} SLOTS`) or change the task's pool",
                c.pool, c.pool
            ));
        }
        let Some(task) = dag.task(&c.task_id) else {
            return fatal(format!(
                "task {} is not in DAG {} (version {})",
                c.task_id, c.dag_id, c.dag_version_id
            ));
        };
        let Some(kind) = self.registry.get(&task.kind) else {
            return fatal(format!("unknown task kind `{}`", task.kind));
        };
        let conf: Value = serde_json::from_str(&c.conf).unwrap_or_else(|_| serde_json::json!({}));
        let item = match c.map_item.as_deref().map(serde_json::from_str::<Value>) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => return fatal(format!("the stored map item is not JSON: {e}")),
        };
        let info = RunInfo {
            dag: &dag,
            task,
            run_pk: Some(c.dag_run_id),
            run_id: &c.run_id,
            run_type: &c.run_type,
            logical_date: c.logical_date,
            data_interval_start: c.data_interval_start,
            data_interval_end: c.data_interval_end,
            conf: &conf,
            try_number: c.try_number,
            map_index: c.map_index,
            item,
            result: None,
            checkpoints: &creds.checkpoints,
        };
        if let (Some(map_over), -1) = (&task.map_over, c.map_index) {
            // The placeholder of a mapped task: expand it, run nothing.
            let items = match self.render(&creds.secrets, &info, map_over).await {
                Ok(Value::Array(items)) => items,
                Ok(other) => {
                    return fatal(format!(
                        "`map_over` must render to a list, got {}",
                        sluice_tasks::short(&other)
                    ))
                }
                Err(e) => return e,
            };
            if items.len() > MAX_MAP_LENGTH {
                return fatal(format!(
                    "`map_over` rendered {} items; at most {MAX_MAP_LENGTH} mapped task instances are allowed (batch the items instead)",
                    items.len()
                ));
            }
            return Outcome::Expand {
                items: items.iter().map(Value::to_string).collect(),
                max_active: task.map_concurrency,
            };
        }
        let raw = Value::Object(task.args.clone());
        // Keys the kind renders per record stay templates; they see this context too.
        let per_record: Vec<(String, Value)> = kind
            .record_template_keys()
            .iter()
            .filter_map(|k| task.args.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        let (mut args, template_context) = if context::has_templates(&raw) {
            let ctx = match self.context(&creds.secrets, &info, &raw).await {
                Ok(ctx) => ctx,
                Err(e) => return e,
            };
            let mut now = task.args.clone();
            for (k, _) in &per_record {
                now.remove(k);
            }
            match self.templates.render_value(&Value::Object(now), &ctx) {
                Ok(Value::Object(m)) => {
                    side.rendered = Some(
                        creds
                            .masker
                            .mask_json(&Value::Object(m.clone()))
                            .to_string(),
                    );
                    (m, ctx)
                }
                Ok(_) => return fatal("rendered arguments are not a table".into()),
                Err(e) => return fatal(format!("template error in `{e}`")),
            }
        } else {
            (task.args.clone(), minijinja::Value::from(()))
        };
        args.extend(per_record);
        let tctx = TaskContext {
            dag_id: c.dag_id.clone(),
            run_id: c.run_id.clone(),
            task_id: c.task_id.clone(),
            map_index: c.map_index,
            try_number: c.try_number,
            log: log.clone(),
            cancel: cancel.clone(),
            conns: creds.connections.clone(),
            state,
            metrics,
            template_context,
        };
        let fut = kind.run(&tctx, args);
        tokio::pin!(fut);
        let timeout = task.timeout_ms.map(Duration::from_millis);
        let result = match timeout {
            Some(limit) => {
                tokio::select! {
                    r = &mut fut => r,
                    _ = tokio::time::sleep(limit) => {
                        log.error(&format!("timed out after {}", humantime::format_duration(limit)));
                        cancel.cancel();
                        // Let the kind clean up (stop child processes) before reporting.
                        let _ = (&mut fut).await;
                        return Outcome::Failed {
                            error: format!("timed out after {}", humantime::format_duration(limit)),
                            retryable: true,
                        };
                    }
                }
            }
            None => fut.await,
        };
        match result {
            Ok(value) if !task.checkpoint_update.is_empty() => {
                let updates = Value::Object(
                    task.checkpoint_update
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                );
                let info = RunInfo {
                    result: Some(value),
                    ..info
                };
                let rendered = match self.render(&creds.secrets, &info, &updates).await {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => return fatal("rendered checkpoint_update is not a table".into()),
                    Err(Outcome::Failed { error, retryable }) => {
                        return Outcome::Failed {
                            error: format!("checkpoint_update: {error}"),
                            retryable,
                        }
                    }
                    Err(other) => return other,
                };
                for (name, v) in rendered {
                    match checkpoints::stored_text(&v) {
                        Some(text) => {
                            log.info(&format!(
                                "checkpoint {name} -> {text} (committed when the run succeeds)"
                            ));
                            side.checkpoint_proposals.push(StateProposal {
                                namespace: sluice_store::checkpoint_namespace(&c.dag_id),
                                key: name,
                                value: text,
                            });
                        }
                        None => log.info(&format!(
                            "checkpoint {name} unchanged (the update rendered empty)"
                        )),
                    }
                }
                let value = info.result.unwrap_or(Value::Null);
                match self.store_xcom(c, value) {
                    Ok(x) => Outcome::Success(x),
                    Err(e) => Outcome::Failed {
                        error: format!("cannot store the task's result: {e}"),
                        retryable: true,
                    },
                }
            }
            Ok(value) => match self.store_xcom(c, value) {
                Ok(x) => Outcome::Success(x),
                Err(e) => Outcome::Failed {
                    error: format!("cannot store the task's result: {e}"),
                    retryable: true,
                },
            },
            Err(TaskError::Failed(error)) => Outcome::Failed {
                error,
                retryable: true,
            },
            Err(TaskError::Fatal(error)) => fatal(error),
            Err(TaskError::Cancelled) => match reason.load(Ordering::SeqCst) {
                CANCEL_SHUTDOWN => Outcome::Interrupted {
                    reason: "the worker shut down".into(),
                },
                _ => Outcome::Failed {
                    error: "stopped: this worker no longer owns the try".into(),
                    retryable: true,
                },
            },
        }
    }

    /// Renders `value` in the context of `info`; a failure is the try's outcome
    /// (retryable when the context could not be read, fatal for a template error).
    async fn render(
        &self,
        secrets: &Secrets,
        info: &RunInfo<'_>,
        value: &Value,
    ) -> Result<Value, Outcome> {
        let ctx = self.context(secrets, info, value).await?;
        self.templates
            .render_value(value, &ctx)
            .map_err(|e| Outcome::Failed {
                error: format!("template error in `{e}`"),
                retryable: false,
            })
    }

    /// The template context for rendering `value`; a failure is the try's outcome.
    async fn context(
        &self,
        secrets: &Secrets,
        info: &RunInfo<'_>,
        value: &Value,
    ) -> Result<minijinja::Value, Outcome> {
        context::build(
            &self.store,
            &self.templates,
            &self.cfg.artifacts_dir,
            secrets,
            info,
            value,
        )
        .await
        .map_err(|e| Outcome::Failed {
            error: format!("cannot render templates: {e}"),
            retryable: e.retryable,
        })
    }

    /// Small values stay inline; large ones are written to the artifact store and the
    /// XCom keeps their path.
    fn store_xcom(&self, c: &Claimed, value: Value) -> std::io::Result<Option<XcomValue>> {
        if value.is_null() {
            return Ok(None);
        }
        let text = value.to_string();
        if text.len() <= self.cfg.xcom_inline_max_bytes {
            return Ok(Some(XcomValue::Inline(text)));
        }
        let name = if c.map_index >= 0 {
            format!("{}.{}.json", c.task_id, c.map_index)
        } else {
            format!("{}.json", c.task_id)
        };
        let rel = PathBuf::from(&c.dag_id).join(&c.run_id).join(name);
        let full = self.cfg.artifacts_dir.join(&rel);
        if let Some(dir) = full.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Write then rename, so a reader never sees half a file.
        let tmp = full.with_extension(format!("json.tmp{}", c.try_number));
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &full)?;
        Ok(Some(XcomValue::Artifact {
            path: rel.to_string_lossy().into_owned(),
            size: text.len() as i64,
        }))
    }
}
