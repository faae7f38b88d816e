//! DAG runs: creation (one per logical date), start under max_active_runs, timeouts,
//! and the read side (runs, task instances, tries).

use chrono::{DateTime, Utc};
use sluice_core::{DataInterval, TriggerRule};
use sqlx::Row;

use crate::models::{NewRun, RunRow, RunType, TiRow, TryRow};
use crate::sql::{RUN_COLUMNS, TI_COLUMNS, UNFINISHED_TI};
use crate::state::{RunState, TiState};
use crate::{now, with_pool, BeginWrite, Result, Store, StoreError};

/// Rows per multi-row INSERT: 1,000 rows × 12 parameters stays under SQLite's and
/// PostgreSQL's parameter limits.
const INSERT_CHUNK: usize = 1000;

impl Store {
    /// The data interval of the latest run on the DAG's schedule (scheduled or backfill;
    /// manual runs have their own logical dates).
    pub async fn last_scheduled_interval(&self, dag_id: &str) -> Result<Option<DataInterval>> {
        let row = with_pool!(&self.db, pool => {
            sqlx::query(
                "SELECT data_interval_start, data_interval_end FROM dag_run \
                 WHERE dag_id = $1 AND run_type IN ('scheduled', 'backfill') ORDER BY logical_date DESC LIMIT 1",
            )
            .bind(dag_id)
            .fetch_optional(pool)
            .await?
            .map(|r| DataInterval { start: r.get(0), end: r.get(1) })
        });
        Ok(row)
    }

    /// Number of queued and running runs of a DAG.
    pub async fn active_run_count(&self, dag_id: &str) -> Result<i64> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM dag_run WHERE dag_id = $1 AND state IN ('queued', 'running')",
            )
            .bind(dag_id)
            .fetch_one(pool)
            .await?
        }))
    }

    /// Creates a queued run on the DAG's current version. Returns `None` when a run for
    /// that logical date (or with that run id) already exists — the database's unique
    /// constraints make this the single arbiter when schedulers race.
    pub async fn create_run(&self, new: &NewRun, actor: &str) -> Result<Option<RunRow>> {
        let Some((version_id, dag)) = self.latest_dag(&new.dag_id).await? else {
            return Err(StoreError::NotFound {
                what: format!("DAG {}", new.dag_id),
            });
        };
        if !new.conf.is_object() {
            return Err(StoreError::Invalid(format!(
                "conf must be a JSON object, got {}",
                new.conf
            )));
        }
        let q = format!(
            "INSERT INTO dag_run (dag_id, run_id, dag_version_id, run_type, state, logical_date, \
             data_interval_start, data_interval_end, conf, max_active_tasks, queued_at) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10) \
             ON CONFLICT DO NOTHING RETURNING {RUN_COLUMNS}"
        );
        let row = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let row = sqlx::query_as::<_, RunRow>(&q)
                .bind(&new.dag_id)
                .bind(&new.run_id)
                .bind(version_id)
                .bind(new.run_type.as_str())
                .bind(new.logical_date)
                .bind(new.data_interval_start)
                .bind(new.data_interval_end)
                .bind(new.conf.to_string())
                .bind(i64::from(dag.max_active_tasks))
                .bind(now())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(run) = &row {
                if new.run_type != RunType::Scheduled {
                    sqlx::query(
                        "INSERT INTO audit_log (at, event, dag_id, run_id, actor, detail) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(now())
                    .bind(format!("trigger_{}", new.run_type.as_str()))
                    .bind(&run.dag_id)
                    .bind(&run.run_id)
                    .bind(actor)
                    .bind(&run.conf)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            row
        });
        Ok(row)
    }

    /// Moves the DAG's oldest queued runs to running while fewer than its
    /// max_active_runs are running, creating their task instances; tasks with nothing
    /// upstream (or trigger rule `always`) are scheduled at once. Returns how many task
    /// instances became scheduled.
    pub async fn start_queued_runs(&self, dag_id: &str) -> Result<u64> {
        let ts = now();
        let lock = self.dialect.for_update();
        // Versions are loaded before the transaction: they are immutable, and a cache
        // miss should not hold the write lock.
        let queued: Vec<(i64, i64)> = with_pool!(&self.db, pool => {
            sqlx::query(
                "SELECT id, dag_version_id FROM dag_run WHERE dag_id = $1 AND state = 'queued' \
                 ORDER BY logical_date, id",
            )
            .bind(dag_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
        });
        if queued.is_empty() {
            return Ok(0);
        }
        let mut versions = std::collections::HashMap::new();
        for (_, v) in &queued {
            if !versions.contains_key(v) {
                versions.insert(*v, self.dag_version(*v).await?);
            }
        }
        let scheduled = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            // The DAG row lock serialises run starts of one DAG across schedulers, so
            // max_active_runs holds with any number of them.
            let max_active: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT max_active_runs FROM dag WHERE dag_id = $1{lock}"
            ))
            .bind(dag_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(max_active) = max_active else {
                return Ok(0);
            };
            let running: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM dag_run WHERE dag_id = $1 AND state = 'running'",
            )
            .bind(dag_id)
            .fetch_one(&mut *tx)
            .await?;
            let free = (max_active - running).max(0) as usize;
            let mut scheduled = 0u64;
            for (run_pk, version_id) in queued.iter().take(free) {
                let dag = &versions[version_id];
                let timeout_at: Option<DateTime<Utc>> = dag
                    .dagrun_timeout_ms
                    .map(|ms| ts + chrono::Duration::milliseconds(ms as i64));
                let started = sqlx::query(
                    "UPDATE dag_run SET state = 'running', start_date = $2, timeout_at = $3 \
                     WHERE id = $1 AND state = 'queued'",
                )
                .bind(run_pk)
                .bind(ts)
                .bind(timeout_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if started == 0 {
                    continue;
                }
                let (run_id, logical_date): (String, DateTime<Utc>) =
                    sqlx::query_as("SELECT run_id, logical_date FROM dag_run WHERE id = $1")
                        .bind(run_pk)
                        .fetch_one(&mut *tx)
                        .await?;
                // A run queued again after it ran (cleared through the API) keeps its
                // task instances: the cleared ones were already decided then.
                let (existing, ready): (i64, i64) = sqlx::query_as(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN state = 'scheduled' THEN 1 ELSE 0 END), 0) AS BIGINT) \
                     FROM task_instance WHERE dag_run_id = $1",
                )
                .bind(run_pk)
                .fetch_one(&mut *tx)
                .await?;
                if existing > 0 {
                    scheduled += ready as u64;
                    continue;
                }
                let tasks: Vec<_> = dag.tasks.values().collect();
                for chunk in tasks.chunks(INSERT_CHUNK) {
                    let mut qb = sqlx::QueryBuilder::<DbKind>::new(
                        "INSERT INTO task_instance (dag_run_id, dag_id, run_id, task_id, map_index, \
                         state, try_number, max_tries, pool, pool_slots, priority_weight, \
                         logical_date, scheduled_at) ",
                    );
                    qb.push_values(chunk, |mut b, task| {
                        let ready = task.upstream.is_empty()
                            || task.trigger_rule == TriggerRule::Always;
                        b.push_bind(*run_pk)
                            .push_bind(dag_id)
                            .push_bind(run_id.clone())
                            .push_bind(task.task_id.clone())
                            .push_bind(-1i64)
                            .push_bind(ready.then_some(TiState::Scheduled.as_str()))
                            .push_bind(0i64)
                            .push_bind(i64::from(task.retry.retries) + 1)
                            .push_bind(task.pool.clone())
                            .push_bind(i64::from(task.pool_slots))
                            .push_bind(task.priority_weight)
                            .push_bind(logical_date)
                            .push_bind(ready.then_some(ts));
                        if ready {
                            scheduled += 1;
                        }
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                if dag.tasks.is_empty() {
                    sqlx::query("UPDATE dag_run SET state = 'success', end_date = $2 WHERE id = $1")
                        .bind(run_pk)
                        .bind(ts)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            scheduled
        });
        Ok(scheduled)
    }

    /// DAG ids that have queued runs (to be started when a slot frees).
    pub async fn dags_with_queued_runs(&self) -> Result<Vec<String>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar("SELECT DISTINCT dag_id FROM dag_run WHERE state = 'queued'")
                .fetch_all(pool)
                .await?
        }))
    }

    pub async fn runs(&self, dag_id: &str, limit: i64) -> Result<Vec<RunRow>> {
        let q = format!(
            "SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = $1 ORDER BY logical_date DESC, id DESC LIMIT $2"
        );
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, RunRow>(&q).bind(dag_id).bind(limit).fetch_all(pool).await?
        }))
    }

    pub async fn run(&self, dag_id: &str, run_id: &str) -> Result<Option<RunRow>> {
        let q = format!("SELECT {RUN_COLUMNS} FROM dag_run WHERE dag_id = $1 AND run_id = $2");
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, RunRow>(&q).bind(dag_id).bind(run_id).fetch_optional(pool).await?
        }))
    }

    pub async fn run_by_pk(&self, id: i64) -> Result<Option<RunRow>> {
        let q = format!("SELECT {RUN_COLUMNS} FROM dag_run WHERE id = $1");
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, RunRow>(&q).bind(id).fetch_optional(pool).await?
        }))
    }

    /// Task instances of a run, in task order of insertion.
    pub async fn task_instances(&self, run_pk: i64) -> Result<Vec<TiRow>> {
        let q = format!("SELECT {TI_COLUMNS} FROM task_instance WHERE dag_run_id = $1 ORDER BY id");
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, TiRow>(&q).bind(run_pk).fetch_all(pool).await?
        }))
    }

    pub async fn tries(&self, ti_id: i64) -> Result<Vec<TryRow>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, TryRow>(
                "SELECT ti_id, try_number, state, start_date, end_date, duration_ms, owner, hostname, \
                 log_path, error, records_in, records_out, bytes_in, bytes_out \
                 FROM task_try WHERE ti_id = $1 ORDER BY try_number",
            )
            .bind(ti_id)
            .fetch_all(pool)
            .await?
        }))
    }

    /// The arguments a try ran with after rendering (JSON, secrets masked), if any of
    /// them was a template.
    pub async fn try_rendered_fields(&self, ti_id: i64, try_number: i64) -> Result<Option<String>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT rendered_fields FROM task_try WHERE ti_id = $1 AND try_number = $2",
            )
            .bind(ti_id)
            .bind(try_number)
            .fetch_optional(pool)
            .await?
            .flatten()
        }))
    }

    /// Task instances of several runs (the grid), ordered by run then insertion.
    pub async fn task_instances_of_runs(&self, run_pks: &[i64]) -> Result<Vec<TiRow>> {
        if run_pks.is_empty() {
            return Ok(Vec::new());
        }
        let q = format!(
            "SELECT {TI_COLUMNS} FROM task_instance WHERE dag_run_id {} ORDER BY dag_run_id, id",
            self.dialect.in_int_list(1)
        );
        let ids = serde_json::Value::from(run_pks.to_vec()).to_string();
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, TiRow>(&q).bind(ids).fetch_all(pool).await?
        }))
    }

    /// Tries of all task instances of a run, for timing analysis (Gantt, benchmarks).
    pub async fn run_tries(&self, run_pk: i64) -> Result<Vec<(String, TryRow)>> {
        let rows = with_pool!(&self.db, pool => {
            sqlx::query(
                "SELECT ti.task_id, t.ti_id, t.try_number, t.state, t.start_date, t.end_date, \
                 t.duration_ms, t.owner, t.hostname, t.log_path, t.error, t.records_in, \
                 t.records_out, t.bytes_in, t.bytes_out \
                 FROM task_try t JOIN task_instance ti ON ti.id = t.ti_id \
                 WHERE ti.dag_run_id = $1 ORDER BY t.start_date",
            )
            .bind(run_pk)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    TryRow {
                        ti_id: r.get(1),
                        try_number: r.get(2),
                        state: r.get(3),
                        start_date: r.get(4),
                        end_date: r.get(5),
                        duration_ms: r.get(6),
                        owner: r.get(7),
                        hostname: r.get(8),
                        log_path: r.get(9),
                        error: r.get(10),
                        records_in: r.get(11),
                        records_out: r.get(12),
                        bytes_in: r.get(13),
                        bytes_out: r.get(14),
                    },
                )
            })
            .collect::<Vec<_>>()
        });
        Ok(rows)
    }

    /// Fails running runs past their dagrun_timeout: unfinished task instances are
    /// skipped, running ones failed (their worker sees the lease gone and stops them).
    /// Returns the run ids that timed out.
    pub async fn time_out_runs(&self) -> Result<Vec<(String, String)>> {
        let ts = now();
        let lock = self.dialect.for_update();
        let timed_out = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let runs: Vec<(i64, String, String)> = sqlx::query_as(&format!(
                "SELECT id, dag_id, run_id FROM dag_run WHERE state = 'running' \
                 AND timeout_at IS NOT NULL AND timeout_at <= $1 ORDER BY id{lock}"
            ))
            .bind(ts)
            .fetch_all(&mut *tx)
            .await?;
            for (pk, _, _) in &runs {
                let msg = "the DAG run exceeded its dagrun_timeout";
                sqlx::query(
                    "UPDATE task_try SET state = 'failed', end_date = $2, error = $3 \
                     WHERE state = 'running' AND ti_id IN \
                     (SELECT id FROM task_instance WHERE dag_run_id = $1 AND state = 'running')",
                )
                .bind(pk)
                .bind(ts)
                .bind(msg)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE task_instance SET state = 'failed', end_date = $2, owner = NULL, \
                     lease = NULL, error = $3 WHERE dag_run_id = $1 AND state = 'running'",
                )
                .bind(pk)
                .bind(ts)
                .bind(msg)
                .execute(&mut *tx)
                .await?;
                sqlx::query(&format!(
                    "UPDATE task_instance SET state = 'skipped', end_date = $2 \
                     WHERE dag_run_id = $1 AND {UNFINISHED_TI}"
                ))
                .bind(pk)
                .bind(ts)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE dag_run SET state = $2, end_date = $3 WHERE id = $1")
                    .bind(pk)
                    .bind(RunState::Failed.as_str())
                    .bind(ts)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            runs
        });
        Ok(timed_out.into_iter().map(|(_, d, r)| (d, r)).collect())
    }
}
