//! The hot path: claiming runnable task instances and recording try results.
//!
//! Both are batched (one transaction claims many, one records many) and event-driven:
//! recording a result decides the downstream task instances of what finished, in the
//! same transaction, so nothing has to rescan the run later.
//!
//! Lock order, the same everywhere so concurrent schedulers and workers never deadlock:
//! `dag` row → `dag_run` rows (ascending id) → `pool` rows (by name) → task instances.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sluice_core::{Dag, TriggerRule};
use sqlx::Row;

use crate::sql::{json_list, json_time, ACTIVE_TI_STATES, UNFINISHED_TI};
use crate::state::{decide, RunState, TiState, UpstreamCounts};
use crate::{now, with_pool, BeginWrite, Result, Store};

/// A task instance a worker now owns, with what it needs to run it.
#[derive(Clone, Debug, Serialize)]
pub struct Claimed {
    pub ti_id: i64,
    pub dag_run_id: i64,
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
    pub try_number: i64,
    pub max_tries: i64,
    /// Fencing token: results and heartbeats count only while it still matches.
    pub lease: String,
    pub dag_version_id: i64,
    pub run_type: String,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub conf: String,
    pub start_date: DateTime<Utc>,
    /// Relative to `$SLUICE_HOME/logs`.
    pub log_path: String,
    pub pool: String,
    /// The task names a pool that does not exist: the worker fails the try at once
    /// with a message saying so, rather than leaving it waiting forever.
    pub pool_missing: bool,
    /// The JSON item of a mapped task instance (`item` in its templates).
    pub map_item: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum XcomValue {
    /// JSON text kept in the database.
    Inline(String),
    /// JSON file in the artifact store, for values over the inline limit.
    Artifact { path: String, size: i64 },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Success(Option<XcomValue>),
    /// `retryable: false` fails the task instance whatever retries are left (a bad
    /// configuration will not get better by retrying).
    Failed {
        error: String,
        retryable: bool,
    },
    /// The worker stopped (shutdown) before the try finished: the task instance is
    /// scheduled again without using up one of its retries.
    Interrupted {
        reason: String,
    },
    /// A mapped task's placeholder (map index -1) rendered its `map_over`: it becomes
    /// one scheduled task instance per item (none: the task is skipped). Not a try.
    Expand {
        /// Each item as JSON text.
        items: Vec<String>,
        /// `map_concurrency`.
        max_active: Option<u32>,
    },
}

#[derive(Clone, Debug)]
pub struct TryResult {
    pub ti_id: i64,
    pub dag_run_id: i64,
    pub dag_version_id: i64,
    pub task_id: String,
    pub lease: String,
    pub end: DateTime<Utc>,
    pub outcome: Outcome,
    /// Records and bytes the try read and wrote.
    pub io: TryIo,
    /// State the try proposes, committed when the run succeeds (kept only if the try
    /// succeeded).
    pub proposals: Vec<StateProposal>,
    /// The try's arguments after templates were rendered, secrets masked (JSON); None
    /// when nothing was templated.
    pub rendered: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TryIo {
    pub records_in: i64,
    pub records_out: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateProposal {
    pub namespace: String,
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Default)]
pub struct FinishReport {
    /// Task instances that became scheduled (downstream decided, or rescheduled).
    pub scheduled: u64,
    /// Runs that reached success or failed: (dag_id, run_id, state).
    pub runs_finished: Vec<(String, String, RunState)>,
    /// Earliest time a try recorded here is due for a retry.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Results ignored because their lease no longer matched (the try had been failed
    /// as a zombie, timed out or cleared meanwhile).
    pub stale: usize,
}

/// A claim candidate: (id, dag_run_id, pool, pool_slots, run's max_active_tasks,
/// task_id, max_active_per_run).
type CandidateRow = (i64, i64, String, i64, i64, String, Option<i64>);

/// (try_number, max_tries, start_date, lease) of a running task instance.
type RunningRow = (i64, i64, Option<DateTime<Utc>>, Option<String>);

/// The task-state namespace of a DAG's checkpoints.
pub fn checkpoint_namespace(dag_id: &str) -> String {
    format!("checkpoint:{dag_id}")
}

/// A committed checkpoint value waiting to be written to Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    pub dag_id: String,
    pub name: String,
    pub value: String,
    /// When the run that set it succeeded.
    pub committed_at: DateTime<Utc>,
}

/// Relative path of a try's log file, laid out as Airflow does.
pub fn log_path(
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
    try_number: i64,
) -> String {
    let map = if map_index >= 0 {
        format!("/map_index={map_index}")
    } else {
        String::new()
    };
    format!("dag_id={dag_id}/run_id={run_id}/task_id={task_id}{map}/attempt={try_number}.log")
}

impl Store {
    /// Registers a worker (scheduler or executor process) for heartbeats.
    pub async fn register_worker(&self, id: &str, hostname: &str, role: &str) -> Result<()> {
        let ts = now();
        with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO worker (id, hostname, pid, role, started_at, heartbeat_at) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(id)
            .bind(hostname)
            .bind(i64::from(std::process::id()))
            .bind(role)
            .bind(ts)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records that the worker is alive and returns the (task instance id, lease) of
    /// every try it still owns. A try it runs that is missing here was taken from it
    /// (timed out, cleared, failed as a zombie): the worker must stop it.
    pub async fn heartbeat(&self, worker_id: &str) -> Result<Vec<(i64, String)>> {
        let ts = now();
        let owned = with_pool!(&self.db, pool => {
            sqlx::query("UPDATE worker SET heartbeat_at = $2 WHERE id = $1")
                .bind(worker_id)
                .bind(ts)
                .execute(pool)
                .await?;
            sqlx::query_as::<_, (i64, String)>(
                "SELECT id, lease FROM task_instance WHERE owner = $1 AND state = 'running' \
                 AND lease IS NOT NULL",
            )
            .bind(worker_id)
            .fetch_all(pool)
            .await?
        });
        Ok(owned)
    }

    pub async fn stop_worker(&self, worker_id: &str) -> Result<()> {
        with_pool!(&self.db, pool => {
            sqlx::query("UPDATE worker SET stopped_at = $2 WHERE id = $1")
                .bind(worker_id)
                .bind(now())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Claims up to `limit` runnable task instances for `worker_id`, in order of
    /// priority, then logical date, then id, within pool slots and each run's
    /// max_active_tasks — checked in the same transaction that claims, so concurrent
    /// claimers can neither exceed a cap nor take the same task instance.
    pub async fn claim(
        &self,
        worker_id: &str,
        hostname: &str,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ts = now();
        let lease = uuid::Uuid::new_v4().simple().to_string();
        let d = self.dialect;
        let pools_q = format!(
            "SELECT name, slots FROM pool ORDER BY name{}",
            d.for_update()
        );
        let candidates_q = format!(
            "SELECT ti.id, ti.dag_run_id, ti.pool, ti.pool_slots, r.max_active_tasks, \
             ti.task_id, ti.max_active_per_run \
             FROM task_instance ti JOIN dag_run r ON r.id = ti.dag_run_id \
             WHERE ti.state IN ('scheduled', 'up_for_retry') \
             AND (ti.state = 'scheduled' OR ti.next_try_at <= $1) AND r.state = 'running' \
             ORDER BY ti.priority_weight DESC, ti.logical_date, ti.id LIMIT $2{}",
            d.for_update_skip_locked("ti")
        );
        let mark_q = format!(
            "UPDATE task_instance SET state = 'running', try_number = try_number + 1, \
             owner = $2, lease = $3, hostname = $4, start_date = $5, end_date = NULL, \
             duration_ms = NULL, next_try_at = NULL, error = NULL WHERE id {}",
            d.in_int_list(1)
        );
        let info_q = format!(
            "SELECT ti.id, ti.dag_run_id, ti.dag_id, ti.run_id, ti.task_id, ti.map_index, \
             ti.try_number, ti.max_tries, r.dag_version_id, r.run_type, r.logical_date, \
             r.data_interval_start, r.data_interval_end, r.conf, ti.pool, ti.map_item \
             FROM task_instance ti JOIN dag_run r ON r.id = ti.dag_run_id WHERE ti.id {} \
             ORDER BY ti.priority_weight DESC, ti.logical_date, ti.id",
            d.in_int_list(1)
        );
        let claimed = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            // Locking the pool rows serialises claimers on PostgreSQL, so the slot
            // counts read below cannot be raced.
            let pools: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(&pools_q)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
            let mut pool_used: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(&format!(
                "SELECT pool, CAST(SUM(pool_slots) AS BIGINT) FROM task_instance \
                 WHERE state IN {ACTIVE_TI_STATES} GROUP BY pool"
            ))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            let mut run_active: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(&format!(
                "SELECT dag_run_id, COUNT(*) FROM task_instance \
                 WHERE state IN {ACTIVE_TI_STATES} GROUP BY dag_run_id"
            ))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            // Read more than `limit`: some candidates may be blocked by a cap.
            let candidates: Vec<CandidateRow> = sqlx::query_as(&candidates_q)
                .bind(ts)
                .bind((limit * 4) as i64)
                .fetch_all(&mut *tx)
                .await?;
            // Mapped tasks with `map_concurrency`: active instances per (run, task).
            // Read only when a candidate has a cap: most claims have none.
            let mut task_active: HashMap<(i64, String), i64> = if candidates.iter().any(|c| c.6.is_some()) {
                sqlx::query_as::<_, (i64, String, i64)>(&format!(
                    "SELECT dag_run_id, task_id, COUNT(*) FROM task_instance \
                     WHERE state IN {ACTIVE_TI_STATES} AND max_active_per_run IS NOT NULL \
                     GROUP BY dag_run_id, task_id"
                ))
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(r, t, n)| ((r, t), n))
                .collect()
            } else {
                HashMap::new()
            };
            let mut chosen = Vec::new();
            let mut missing_pool = std::collections::HashSet::new();
            for (id, run_pk, pool_name, slots, max_active_tasks, task_id, per_task_cap) in candidates {
                if chosen.len() >= limit {
                    break;
                }
                let Some(pool_slots) = pools.get(&pool_name) else {
                    missing_pool.insert(id);
                    chosen.push(id);
                    continue;
                };
                let used = pool_used.entry(pool_name).or_insert(0);
                let active = run_active.entry(run_pk).or_insert(0);
                if *used + slots > *pool_slots || *active >= max_active_tasks {
                    continue;
                }
                if let Some(cap) = per_task_cap {
                    let n = task_active.entry((run_pk, task_id)).or_insert(0);
                    if *n >= cap {
                        continue;
                    }
                    *n += 1;
                }
                *used += slots;
                *active += 1;
                chosen.push(id);
            }
            if chosen.is_empty() {
                tx.commit().await?;
                return Ok(Vec::new());
            }
            let ids = json_list(&chosen);
            sqlx::query(&mark_q)
                .bind(&ids)
                .bind(worker_id)
                .bind(&lease)
                .bind(hostname)
                .bind(ts)
                .execute(&mut *tx)
                .await?;
            let rows = sqlx::query(&info_q).bind(&ids).fetch_all(&mut *tx).await?;
            let claimed: Vec<Claimed> = rows
                .into_iter()
                .map(|r| {
                    let ti_id: i64 = r.get(0);
                    let dag_id: String = r.get(2);
                    let run_id: String = r.get(3);
                    let task_id: String = r.get(4);
                    let map_index: i64 = r.get(5);
                    let try_number: i64 = r.get(6);
                    Claimed {
                        ti_id,
                        dag_run_id: r.get(1),
                        log_path: log_path(&dag_id, &run_id, &task_id, map_index, try_number),
                        dag_id,
                        run_id,
                        task_id,
                        map_index,
                        try_number,
                        max_tries: r.get(7),
                        lease: lease.clone(),
                        dag_version_id: r.get(8),
                        run_type: r.get(9),
                        logical_date: r.get(10),
                        data_interval_start: r.get(11),
                        data_interval_end: r.get(12),
                        conf: r.get(13),
                        start_date: ts,
                        pool: r.get(14),
                        map_item: r.get(15),
                        pool_missing: missing_pool.contains(&ti_id),
                    }
                })
                .collect();
            let mut qb = sqlx::QueryBuilder::<DbKind>::new(
                "INSERT INTO task_try (ti_id, try_number, state, start_date, owner, hostname, log_path) ",
            );
            qb.push_values(&claimed, |mut b, c| {
                b.push_bind(c.ti_id)
                    .push_bind(c.try_number)
                    .push_bind("running")
                    .push_bind(ts)
                    .push_bind(worker_id)
                    .push_bind(hostname)
                    .push_bind(c.log_path.clone());
            });
            qb.push(" ON CONFLICT (ti_id, try_number) DO UPDATE SET state = 'running', \
                     start_date = excluded.start_date, owner = excluded.owner, \
                     hostname = excluded.hostname, end_date = NULL, duration_ms = NULL, error = NULL");
            qb.build().execute(&mut *tx).await?;
            tx.commit().await?;
            claimed
        });
        Ok(claimed)
    }

    /// Records try results in one transaction: each task instance's new state (with
    /// retries and backoff), its XCom, its try row; then decides the downstream task
    /// instances of everything that finished, and finishes runs with nothing left.
    pub async fn finish(&self, results: &[TryResult]) -> Result<FinishReport> {
        let mut report = FinishReport::default();
        if results.is_empty() {
            return Ok(report);
        }
        let mut dags: HashMap<i64, Arc<Dag>> = HashMap::new();
        for r in results {
            if let std::collections::hash_map::Entry::Vacant(slot) = dags.entry(r.dag_version_id) {
                slot.insert(self.dag_version(r.dag_version_id).await?);
            }
        }
        // Per run, in ascending id: the lock order.
        let mut by_run: BTreeMap<i64, Vec<&TryResult>> = BTreeMap::new();
        for r in results {
            by_run.entry(r.dag_run_id).or_default().push(r);
        }
        let d = self.dialect;
        let lock_run_q = format!(
            "SELECT dag_id, run_id, state FROM dag_run WHERE id = $1{}",
            d.for_update()
        );
        let current_q = format!(
            "SELECT id, try_number, max_tries, start_date, lease FROM task_instance \
             WHERE id {} AND state = 'running'",
            d.in_int_list(1)
        );
        let update_tis_q = format!(
            "UPDATE task_instance AS t SET state = v.state, end_date = v.end_date, \
             duration_ms = v.duration_ms, next_try_at = v.next_try_at, owner = NULL, lease = NULL, \
             error = v.error, max_tries = v.max_tries, \
             scheduled_at = CASE WHEN v.state = 'scheduled' THEN v.end_date ELSE t.scheduled_at END \
             FROM {} WHERE t.id = v.id",
            d.json_rows(
                1,
                &[
                    ("id", "bigint"),
                    ("state", "text"),
                    ("end_date", "timestamptz"),
                    ("duration_ms", "bigint"),
                    ("next_try_at", "timestamptz"),
                    ("error", "text"),
                    ("max_tries", "bigint"),
                ]
            )
        );
        let update_tries_q = format!(
            "UPDATE task_try AS t SET state = v.state, end_date = v.end_date, \
             duration_ms = v.duration_ms, error = v.error, records_in = v.records_in, \
             records_out = v.records_out, bytes_in = v.bytes_in, bytes_out = v.bytes_out, \
             rendered_fields = v.rendered_fields \
             FROM {} WHERE t.ti_id = v.ti_id AND t.try_number = v.try_number",
            d.json_rows(
                1,
                &[
                    ("ti_id", "bigint"),
                    ("try_number", "bigint"),
                    ("state", "text"),
                    ("end_date", "timestamptz"),
                    ("duration_ms", "bigint"),
                    ("error", "text"),
                    ("records_in", "bigint"),
                    ("records_out", "bigint"),
                    ("bytes_in", "bigint"),
                    ("bytes_out", "bigint"),
                    ("rendered_fields", "text"),
                ]
            )
        );
        // `WHERE true`: SQLite cannot otherwise tell the upsert's ON from a join's.
        let insert_proposals_q = format!(
            "INSERT INTO state_proposal (dag_run_id, namespace, key, value) \
             SELECT $1, v.namespace, v.key, v.value FROM {} WHERE true \
             ON CONFLICT (dag_run_id, namespace, key) DO UPDATE SET value = excluded.value",
            d.json_rows(
                2,
                &[("namespace", "text"), ("key", "text"), ("value", "text")]
            )
        );
        let expand_q = format!(
            "INSERT INTO task_instance (dag_run_id, dag_id, run_id, task_id, map_index, state, \
             try_number, max_tries, pool, pool_slots, priority_weight, logical_date, scheduled_at, \
             map_item, max_active_per_run) \
             SELECT t.dag_run_id, t.dag_id, t.run_id, t.task_id, v.map_index, 'scheduled', 0, \
             t.max_tries, t.pool, t.pool_slots, t.priority_weight, t.logical_date, $2, v.item, \
             t.max_active_per_run FROM task_instance t, {} WHERE t.id = $1",
            d.json_rows(3, &[("map_index", "bigint"), ("item", "text")])
        );
        let upstream_states_q = format!(
            "SELECT task_id, state FROM task_instance WHERE dag_run_id = $1 AND task_id {}",
            d.in_text_list(2)
        );
        let decide_q = format!(
            "UPDATE task_instance SET state = $3, \
             scheduled_at = CASE WHEN $3 = 'scheduled' THEN $4 ELSE scheduled_at END, \
             end_date = CASE WHEN $3 = 'scheduled' THEN end_date ELSE $4 END \
             WHERE dag_run_id = $1 AND task_id {} AND state IS NULL RETURNING task_id",
            d.in_text_list(2)
        );
        let ts = now();
        let report = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            for (run_pk, run_results) in &by_run {
                let run: Option<(String, String, String)> = sqlx::query_as(&lock_run_q)
                    .bind(run_pk)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((dag_id, run_id, _run_state)) = run else {
                    // The run was deleted while the try ran: nothing left to record.
                    report.stale += run_results.len();
                    continue;
                };
                let dag = dags[&run_results[0].dag_version_id].clone();
                let mut changed: Vec<String> = Vec::new();
                let ids: Vec<i64> = run_results.iter().map(|r| r.ti_id).collect();
                let current: HashMap<i64, RunningRow> =
                    sqlx::query_as::<_, (i64, i64, i64, Option<DateTime<Utc>>, Option<String>)>(
                        &current_q,
                    )
                        .bind(json_list(&ids))
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .map(|(id, t, m, s, l)| (id, (t, m, s, l)))
                        .collect();
                let mut ti_updates = Vec::with_capacity(run_results.len());
                let mut try_updates = Vec::with_capacity(run_results.len());
                let mut xcoms = Vec::new();
                let mut proposals = Vec::new();
                for r in run_results {
                    // Fencing: only the lease holder's result counts.
                    let Some((try_number, max_tries, start, _)) = current
                        .get(&r.ti_id)
                        .filter(|c| c.3.as_deref() == Some(r.lease.as_str()))
                    else {
                        report.stale += 1;
                        continue;
                    };
                    let (try_number, max_tries) = (*try_number, *max_tries);
                    if let Outcome::Expand { items, max_active } = &r.outcome {
                        // Expanding is not a try: drop the try row the claim made.
                        sqlx::query("DELETE FROM task_try WHERE ti_id = $1 AND try_number = $2")
                            .bind(r.ti_id)
                            .bind(try_number)
                            .execute(&mut *tx)
                            .await?;
                        if items.is_empty() {
                            // Nothing to map over: the task is skipped, as in Airflow.
                            sqlx::query(
                                "UPDATE task_instance SET state = 'skipped', try_number = 0, \
                                 owner = NULL, lease = NULL, end_date = $2, start_date = NULL \
                                 WHERE id = $1",
                            )
                            .bind(r.ti_id)
                            .bind(r.end)
                            .execute(&mut *tx)
                            .await?;
                            changed.push(r.task_id.clone());
                            continue;
                        }
                        sqlx::query(
                            "UPDATE task_instance SET map_index = 0, state = 'scheduled', \
                             try_number = 0, owner = NULL, lease = NULL, start_date = NULL, \
                             scheduled_at = $2, map_item = $3, max_active_per_run = $4 WHERE id = $1",
                        )
                        .bind(r.ti_id)
                        .bind(r.end)
                        .bind(&items[0])
                        .bind(max_active.map(i64::from))
                        .execute(&mut *tx)
                        .await?;
                        if items.len() > 1 {
                            let rest: Vec<serde_json::Value> = items[1..]
                                .iter()
                                .enumerate()
                                .map(|(i, item)| serde_json::json!({"map_index": i + 1, "item": item}))
                                .collect();
                            sqlx::query(&expand_q)
                                .bind(r.ti_id)
                                .bind(r.end)
                                .bind(serde_json::Value::Array(rest).to_string())
                                .execute(&mut *tx)
                                .await?;
                        }
                        report.scheduled += items.len() as u64;
                        continue;
                    }
                    let duration_ms = start.map(|s| (r.end - s).num_milliseconds().max(0));
                    let (state, try_state, error, next_try_at, max_tries) = match &r.outcome {
                        Outcome::Success(_) => (TiState::Success, "success", None, None, max_tries),
                        Outcome::Failed { error, retryable } => {
                            if *retryable && try_number < max_tries {
                                let policy = dag.task(&r.task_id).map(|t| t.retry.clone());
                                let delay = policy
                                    .map(|p| p.delay_for((try_number + 1) as u32, rand::random::<f64>()))
                                    .unwrap_or_default();
                                let at = r.end
                                    + chrono::Duration::from_std(delay)
                                        .unwrap_or_else(|_| chrono::Duration::zero());
                                report.next_retry_at = Some(match report.next_retry_at {
                                    Some(prev) if prev < at => prev,
                                    _ => at,
                                });
                                (TiState::UpForRetry, "up_for_retry", Some(error.clone()), Some(at), max_tries)
                            } else {
                                (TiState::Failed, "failed", Some(error.clone()), None, max_tries)
                            }
                        }
                        Outcome::Interrupted { reason } => (
                            TiState::Scheduled,
                            "failed",
                            Some(format!("interrupted: {reason}; it will run again")),
                            None,
                            max_tries + 1,
                        ),
                        Outcome::Expand { .. } => unreachable!("handled above"),
                    };
                    ti_updates.push(serde_json::json!({
                        "id": r.ti_id,
                        "state": state.as_str(),
                        "end_date": json_time(r.end),
                        "duration_ms": duration_ms,
                        "next_try_at": next_try_at.map(json_time),
                        "error": error,
                        "max_tries": max_tries,
                    }));
                    try_updates.push(serde_json::json!({
                        "ti_id": r.ti_id,
                        "try_number": try_number,
                        "state": try_state,
                        "end_date": json_time(r.end),
                        "duration_ms": duration_ms,
                        "error": error,
                        "records_in": r.io.records_in,
                        "records_out": r.io.records_out,
                        "bytes_in": r.io.bytes_in,
                        "bytes_out": r.io.bytes_out,
                        "rendered_fields": r.rendered,
                    }));
                    if let Outcome::Success(x) = &r.outcome {
                        if let Some(x) = x {
                            xcoms.push((r.ti_id, x));
                        }
                        for p in &r.proposals {
                            proposals.push(serde_json::json!({
                                "namespace": p.namespace, "key": p.key, "value": p.value,
                            }));
                        }
                    }
                    match state {
                        TiState::Success | TiState::Failed => changed.push(r.task_id.clone()),
                        TiState::Scheduled => report.scheduled += 1,
                        _ => {}
                    }
                }
                if !ti_updates.is_empty() {
                    sqlx::query(&update_tis_q)
                        .bind(serde_json::Value::Array(ti_updates).to_string())
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(&update_tries_q)
                        .bind(serde_json::Value::Array(try_updates).to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                if !proposals.is_empty() {
                    sqlx::query(&insert_proposals_q)
                        .bind(run_pk)
                        .bind(serde_json::Value::Array(proposals).to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                for (ti_id, x) in xcoms {
                    let (value, artifact, size) = match x {
                        XcomValue::Inline(v) => (Some(v.as_str()), None, v.len() as i64),
                        XcomValue::Artifact { path, size } => (None, Some(path.as_str()), *size),
                    };
                    sqlx::query(
                        "INSERT INTO xcom (dag_run_id, task_id, map_index, key, value, artifact_path, \
                         size_bytes, created_at) \
                         SELECT dag_run_id, task_id, map_index, 'return_value', $2, $3, $4, $5 \
                         FROM task_instance WHERE id = $1 \
                         ON CONFLICT (dag_run_id, task_id, map_index, key) DO UPDATE SET \
                         value = excluded.value, artifact_path = excluded.artifact_path, \
                         size_bytes = excluded.size_bytes, created_at = excluded.created_at",
                    )
                    .bind(ti_id)
                    .bind(value)
                    .bind(artifact)
                    .bind(size)
                    .bind(ts)
                    .execute(&mut *tx)
                    .await?;
                }
                // Decide the downstream of what finished, cascading skips and
                // upstream failures: one read of the upstream states and one update
                // per resulting state, per level, whatever the fan-out.
                let mut queue = changed;
                while !queue.is_empty() {
                    let mut candidates: Vec<&str> = Vec::new();
                    for t in &queue {
                        for down in dag.downstream_of(t) {
                            let always = dag.task(down).is_some_and(|d| d.trigger_rule == TriggerRule::Always);
                            if !always && !candidates.contains(&down.as_str()) {
                                candidates.push(down.as_str());
                            }
                        }
                    }
                    queue.clear();
                    if candidates.is_empty() {
                        break;
                    }
                    let mut upstream: Vec<&str> = candidates
                        .iter()
                        .filter_map(|c| dag.task(c))
                        .flat_map(|t| t.upstream.iter().map(String::as_str))
                        .collect();
                    upstream.sort_unstable();
                    upstream.dedup();
                    let rows: Vec<(String, Option<String>)> = sqlx::query_as(&upstream_states_q)
                        .bind(run_pk)
                        .bind(json_list(&upstream))
                        .fetch_all(&mut *tx)
                        .await?;
                    let mut states: HashMap<&str, Vec<Option<TiState>>> = HashMap::new();
                    for (task_id, st) in &rows {
                        states
                            .entry(task_id.as_str())
                            .or_default()
                            .push(st.as_deref().and_then(TiState::parse));
                    }
                    let mut decided: BTreeMap<&'static str, Vec<&str>> = BTreeMap::new();
                    for c in &candidates {
                        let Some(task) = dag.task(c) else { continue };
                        let mut counts = UpstreamCounts::default();
                        for up in &task.upstream {
                            for st in states.get(up.as_str()).into_iter().flatten() {
                                counts.add(*st, 1);
                            }
                        }
                        if let Some(new_state) = decide(task.trigger_rule, &counts).state() {
                            decided.entry(new_state.as_str()).or_default().push(c);
                        }
                    }
                    for (new_state, ids) in decided {
                        let updated: Vec<String> = sqlx::query_scalar(&decide_q)
                            .bind(run_pk)
                            .bind(json_list(&ids))
                            .bind(new_state)
                            .bind(ts)
                            .fetch_all(&mut *tx)
                            .await?;
                        if new_state == TiState::Scheduled.as_str() {
                            report.scheduled += updated.len() as u64;
                        } else {
                            queue.extend(updated);
                        }
                    }
                    queue.sort_unstable();
                    queue.dedup();
                }
                // Finish the run when nothing in it can still change.
                let unfinished: i64 = sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM task_instance WHERE dag_run_id = $1 AND {UNFINISHED_TI}"
                ))
                .bind(run_pk)
                .fetch_one(&mut *tx)
                .await?;
                if unfinished == 0 {
                    let failed: Vec<String> = sqlx::query_scalar(
                        "SELECT DISTINCT task_id FROM task_instance WHERE dag_run_id = $1 \
                         AND state IN ('failed', 'upstream_failed')",
                    )
                    .bind(run_pk)
                    .fetch_all(&mut *tx)
                    .await?;
                    // As in Airflow: the run fails when a leaf failed; a failure that a
                    // downstream `all_done` task absorbed does not fail it.
                    let run_state = if failed.iter().any(|t| dag.downstream_of(t).is_empty()) {
                        RunState::Failed
                    } else {
                        RunState::Success
                    };
                    let n = sqlx::query(
                        "UPDATE dag_run SET state = $2, end_date = $3 WHERE id = $1 AND state = 'running'",
                    )
                    .bind(run_pk)
                    .bind(run_state.as_str())
                    .bind(ts)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n > 0 {
                        if run_state == RunState::Success {
                            // The run's proposals become the committed state, in the
                            // transaction that makes the run successful.
                            sqlx::query(
                                "INSERT INTO task_state (namespace, key, value, dag_run_id, updated_at) \
                                 SELECT namespace, key, value, dag_run_id, $2 FROM state_proposal \
                                 WHERE dag_run_id = $1 \
                                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, \
                                 dag_run_id = excluded.dag_run_id, updated_at = excluded.updated_at",
                            )
                            .bind(run_pk)
                            .bind(ts)
                            .execute(&mut *tx)
                            .await?;
                            // Checkpoints also wait in the outbox for Redis.
                            sqlx::query(
                                "INSERT INTO checkpoint_outbox (dag_id, name, value, dag_run_id, created_at) \
                                 SELECT $3, key, value, dag_run_id, $2 FROM state_proposal \
                                 WHERE dag_run_id = $1 AND namespace = $4 ORDER BY key",
                            )
                            .bind(run_pk)
                            .bind(ts)
                            .bind(&dag_id)
                            .bind(checkpoint_namespace(&dag_id))
                            .execute(&mut *tx)
                            .await?;
                        }
                        sqlx::query("DELETE FROM state_proposal WHERE dag_run_id = $1")
                            .bind(run_pk)
                            .execute(&mut *tx)
                            .await?;
                        report.runs_finished.push((dag_id, run_id, run_state));
                    }
                }
            }
            tx.commit().await?;
            report
        });
        Ok(report)
    }

    /// Fails, into their retry path, the running tries whose worker stopped
    /// heartbeating before `stale_before` (crashed, killed, partitioned). Safe from
    /// any number of processes: each result is fenced by the try's lease.
    pub async fn reap_zombies(&self, stale_before: DateTime<Utc>) -> Result<FinishReport> {
        let ts = now();
        let results: Vec<TryResult> = with_pool!(&self.db, pool => {
            sqlx::query(
                "SELECT ti.id, ti.dag_run_id, r.dag_version_id, ti.task_id, ti.lease, ti.owner, \
                 w.hostname, w.heartbeat_at \
                 FROM task_instance ti JOIN dag_run r ON r.id = ti.dag_run_id \
                 LEFT JOIN worker w ON w.id = ti.owner \
                 WHERE ti.state = 'running' AND ti.lease IS NOT NULL \
                 AND (w.id IS NULL OR w.heartbeat_at < $1 OR w.stopped_at IS NOT NULL)",
            )
            .bind(stale_before)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                let owner: Option<String> = r.get(5);
                let host: Option<String> = r.get(6);
                let seen: Option<DateTime<Utc>> = r.get(7);
                let error = format!(
                    "worker {} on {} stopped heartbeating (last heartbeat {}); the try is failed so it can be retried",
                    owner.unwrap_or_else(|| "?".into()),
                    host.unwrap_or_else(|| "an unknown host".into()),
                    seen.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into()),
                );
                TryResult {
                    ti_id: r.get(0),
                    dag_run_id: r.get(1),
                    dag_version_id: r.get(2),
                    task_id: r.get(3),
                    lease: r.get(4),
                    end: ts,
                    outcome: Outcome::Failed {
                        error,
                        retryable: true,
                    },
                    io: TryIo::default(),
                    proposals: Vec::new(),
                    rendered: None,
                }
            })
            .collect()
        });
        if results.is_empty() {
            return Ok(FinishReport::default());
        }
        tracing::warn!(count = results.len(), "failing tries of dead workers");
        self.finish(&results).await
    }

    /// Committed state values of `keys` in `namespace`.
    pub async fn state_get_many(
        &self,
        namespace: &str,
        keys: &[String],
    ) -> Result<HashMap<String, String>> {
        let q = format!(
            "SELECT key, value FROM task_state WHERE namespace = $1 AND key {}",
            self.dialect.in_text_list(2)
        );
        let rows: Vec<(String, String)> = with_pool!(&self.db, pool => {
            sqlx::query_as(&q).bind(namespace).bind(json_list(keys)).fetch_all(pool).await?
        });
        Ok(rows.into_iter().collect())
    }

    /// All committed state of a namespace (checkpoints, for display).
    pub async fn state_all(&self, namespace: &str) -> Result<Vec<(String, String)>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as("SELECT key, value FROM task_state WHERE namespace = $1 ORDER BY key")
                .bind(namespace)
                .fetch_all(pool)
                .await?
        }))
    }

    /// The oldest checkpoint values still to be written to Redis, in commit order.
    pub async fn checkpoint_outbox(&self, limit: i64) -> Result<Vec<OutboxEntry>> {
        let rows: Vec<(i64, String, String, String, DateTime<Utc>)> = with_pool!(&self.db, pool => {
            sqlx::query_as(
                "SELECT id, dag_id, name, value, created_at FROM checkpoint_outbox ORDER BY id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, dag_id, name, value, committed_at)| OutboxEntry {
                id,
                dag_id,
                name,
                value,
                committed_at,
            })
            .collect())
    }

    /// Forgets outbox entries Redis now has.
    pub async fn checkpoint_outbox_done(&self, ids: &[i64]) -> Result<()> {
        let q = format!(
            "DELETE FROM checkpoint_outbox WHERE id {}",
            self.dialect.in_int_list(1)
        );
        with_pool!(&self.db, pool => {
            sqlx::query(&q).bind(json_list(ids)).execute(pool).await?;
        });
        Ok(())
    }

    /// Earliest time an up_for_retry task instance becomes runnable.
    pub async fn next_retry_at(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar(
                "SELECT MIN(next_try_at) FROM task_instance WHERE state = 'up_for_retry'",
            )
            .fetch_one(pool)
            .await?
        }))
    }

    /// Count of task instances per state (None = "none"), over all runs.
    pub async fn ti_state_counts(&self) -> Result<Vec<(Option<String>, i64)>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as("SELECT state, COUNT(*) FROM task_instance GROUP BY state")
                .fetch_all(pool)
                .await?
        }))
    }
}
