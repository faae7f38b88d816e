//! The scheduler loop. Everything it decides comes from the database, so it can
//! restart at any moment, or run twice against one PostgreSQL database:
//! - DAG files are parsed and recorded as versions (`DagProcessor`);
//! - runs are created when their data interval has ended (unique per logical date);
//! - queued runs start under max_active_runs, scheduling their root tasks;
//! - runs past their timeout fail; tries of dead workers fail into their retry path.
//!
//! Task-level scheduling is not here: recording a try's result schedules its
//! downstream in the same transaction (see `sluice_store::Store::finish`).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sluice_store::{now, NewRun, RunType, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::SchedulerConfig;
use crate::dagbag::DagProcessor;
use crate::metrics::Metrics;

pub struct Scheduler {
    store: Store,
    processor: DagProcessor,
    cfg: SchedulerConfig,
    paused_at_creation: bool,
    /// Wakes the scheduler early (a run finished, a run was triggered).
    pub wake: Arc<Notify>,
    /// Tells executors there is new work.
    executor_wake: Arc<Notify>,
    /// When each DAG next needs a look: (version seen, time). Only a cache of what the
    /// database says; losing it costs one query per DAG.
    next_check: HashMap<String, (i64, DateTime<Utc>)>,
    /// Pass times and the runs the scheduler finishes (served at `/metrics`).
    pub metrics: Arc<Metrics>,
}

/// How many runs one pass creates for a DAG at most, so one DAG catching up on years
/// of intervals cannot starve the others.
const MAX_RUNS_PER_PASS: usize = 64;

impl Scheduler {
    pub fn new(
        store: Store,
        processor: DagProcessor,
        cfg: SchedulerConfig,
        paused_at_creation: bool,
        wake: Arc<Notify>,
        executor_wake: Arc<Notify>,
    ) -> Scheduler {
        Scheduler {
            store,
            processor,
            cfg,
            paused_at_creation,
            wake,
            executor_wake,
            next_check: HashMap::new(),
            metrics: Arc::default(),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut last_refresh: Option<tokio::time::Instant> = None;
        let mut last_reap = tokio::time::Instant::now();
        let mut failures = 0u32;
        tracing::info!(folder = %self.processor.folder().display(), "scheduler started");
        let listen_stop = shutdown.child_token();
        tokio::spawn(crate::forward_wakeups(
            self.store.clone(),
            self.wake.clone(),
            listen_stop.clone(),
            "scheduler",
        ));
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let refresh_due =
                last_refresh.is_none_or(|t| t.elapsed() >= self.cfg.dag_refresh_interval());
            if refresh_due {
                last_refresh = Some(tokio::time::Instant::now());
                if let Err(e) = self
                    .processor
                    .refresh(&self.store, self.paused_at_creation)
                    .await
                {
                    tracing::error!("cannot record DAG files: {e}");
                }
            }
            let reap_due = last_reap.elapsed() >= self.cfg.heartbeat_interval();
            let pass_started = std::time::Instant::now();
            let passed = self.pass(reap_due).await;
            self.metrics.scheduler_pass(pass_started.elapsed());
            match passed {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::error!("scheduler pass failed ({failures} in a row): {e}");
                }
            }
            if reap_due {
                last_reap = tokio::time::Instant::now();
            }
            let pause = if failures > 0 {
                self.cfg.loop_interval() * failures.min(10)
            } else {
                self.cfg.loop_interval()
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        listen_stop.cancel();
        tracing::info!("scheduler stopped");
        Ok(())
    }

    /// One scheduling pass.
    pub async fn pass(&mut self, reap: bool) -> anyhow::Result<()> {
        let ts = now();
        let dags = self.store.dags().await?;
        let mut scheduled = 0u64;
        for row in &dags {
            if !row.is_active || row.is_paused {
                continue;
            }
            let Some(version_id) = row.latest_version_id else {
                continue;
            };
            if let Some((seen, at)) = self.next_check.get(&row.dag_id) {
                if *seen == version_id && *at > ts {
                    continue;
                }
            }
            let dag = self.store.dag_version(version_id).await?;
            if !dag.schedule.is_scheduled() {
                self.next_check
                    .insert(row.dag_id.clone(), (version_id, DateTime::<Utc>::MAX_UTC));
                continue;
            }
            let mut created = 0;
            // Scheduled and backfill runs sit on the schedule's intervals: the latest
            // of them is where the schedule continues.
            let mut last = self.store.last_scheduled_interval(&row.dag_id).await?;
            loop {
                if created >= MAX_RUNS_PER_PASS
                    || self.store.active_run_count(&row.dag_id).await?
                        >= i64::from(dag.max_active_runs)
                {
                    // Look again when a run finishes (the executor wakes us) or next pass.
                    self.next_check.remove(&row.dag_id);
                    break;
                }
                let Some(interval) = dag.next_due_interval(last.as_ref(), ts) else {
                    let at = dag
                        .next_due_at(last.as_ref(), ts)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    self.next_check.insert(row.dag_id.clone(), (version_id, at));
                    break;
                };
                if last == Some(interval) {
                    break;
                }
                let new = NewRun {
                    dag_id: row.dag_id.clone(),
                    run_id: RunType::Scheduled.run_id(interval.start),
                    run_type: RunType::Scheduled,
                    logical_date: interval.start,
                    data_interval_start: interval.start,
                    data_interval_end: interval.end,
                    conf: serde_json::json!({}),
                };
                // None: a run for this logical date exists (another scheduler was first,
                // or a manual run holds the date); the unique constraint decided.
                if let Some(run) = self.store.create_run(&new, "scheduler").await? {
                    tracing::info!(dag_id = %run.dag_id, run_id = %run.run_id, "created DAG run");
                    created += 1;
                }
                last = Some(interval);
            }
        }
        let paused: std::collections::HashSet<&str> = dags
            .iter()
            .filter(|d| d.is_paused)
            .map(|d| d.dag_id.as_str())
            .collect();
        for dag_id in self.store.dags_with_queued_runs().await? {
            if paused.contains(dag_id.as_str()) {
                continue;
            }
            scheduled += self.store.start_queued_runs(&dag_id).await?;
        }
        for (dag_id, run_id) in self.store.time_out_runs().await? {
            tracing::warn!(%dag_id, %run_id, "DAG run timed out");
            self.metrics
                .run_finished(&dag_id, sluice_store::RunState::Failed);
        }
        if reap {
            let stale_before = ts
                - chrono::Duration::from_std(self.cfg.worker_timeout())
                    .unwrap_or(chrono::Duration::seconds(30));
            let report = self.store.reap_zombies(stale_before).await?;
            scheduled += report.scheduled;
            for (dag_id, _, state) in &report.runs_finished {
                self.metrics.run_finished(dag_id, *state);
            }
            if report.next_retry_at.is_some() || !report.runs_finished.is_empty() {
                self.executor_wake.notify_one();
            }
        }
        if scheduled > 0 {
            self.executor_wake.notify_one();
            // Workers in other processes claim it now rather than at their next poll.
            crate::notify_work_soon(&self.store);
        }
        Ok(())
    }
}
