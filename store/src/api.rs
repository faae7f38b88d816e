//! What the REST API (`web/`) needs beyond the scheduler's queries: users and shared
//! secrets, filtered and paginated run lists, and the operator's writes — clearing task
//! instances, setting task-instance and run states, deleting runs — each one
//! transaction that leaves the run exactly as the executor expects to find it.
//!
//! Clearing follows Airflow: the task instance goes back to "none" (its old tries are
//! kept), `max_tries` grows so a new try is allowed, and its run is queued again. Then
//! the run is *re-evaluated* as the executor's `finish` would: in topological order,
//! every undecided task instance whose upstreams allow a decision gets it (`scheduled`,
//! `skipped`, `upstream_failed`), so roots and tasks whose upstreams are done run again
//! while cleared downstream tasks wait for them.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sluice_core::Dag;
use sqlx::Row;

use crate::models::{RunRow, TiRow};
use crate::sql::{RUN_COLUMNS, TI_COLUMNS};
use crate::state::{decide, RunState, TiState, UpstreamCounts};
use crate::{now, with_pool, BeginWrite, Result, Store, StoreError};

/// Records a decision of [`evaluate_run`] for one task instance.
macro_rules! apply_decision {
    ($tx:expr, $id:expr, $state:expr, $ts:expr) => {{
        let st: TiState = $state;
        sqlx::query(
            "UPDATE task_instance SET state = $2, \
             scheduled_at = CASE WHEN $2 = 'scheduled' THEN $3 ELSE scheduled_at END, \
             end_date = CASE WHEN $2 = 'scheduled' THEN end_date ELSE $3 END \
             WHERE id = $1 AND state IS NULL",
        )
        .bind($id)
        .bind(st.as_str())
        .bind($ts)
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Sets a run's state: a finished one gets its end date, a queued one loses it (the
/// scheduler starts it again; its task instances are kept).
macro_rules! set_run_state_row {
    ($tx:expr, $run_pk:expr, $state:expr, $ts:expr) => {{
        let st: RunState = $state;
        let finished = matches!(st, RunState::Success | RunState::Failed);
        sqlx::query(
            "UPDATE dag_run SET state = $2, \
             end_date = CASE WHEN $3 THEN COALESCE(CASE WHEN state IN ('success', 'failed') THEN end_date END, $4) ELSE NULL END \
             WHERE id = $1",
        )
        .bind($run_pk)
        .bind(st.as_str())
        .bind(finished)
        .bind($ts)
        .execute(&mut *$tx)
        .await?;
    }};
}

/// A user of the REST API.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UserRow {
    pub username: String,
    /// Argon2 PHC string; the password itself is never stored.
    pub password_hash: String,
    /// `admin` or `viewer`.
    pub role: String,
    pub created_at: DateTime<Utc>,
}

/// Bounds on one timestamp column; each is inclusive (`gte`, `lte`) or strict.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeRange {
    pub gte: Option<DateTime<Utc>>,
    pub gt: Option<DateTime<Utc>>,
    pub lte: Option<DateTime<Utc>>,
    pub lt: Option<DateTime<Utc>>,
}

/// Which runs to list.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// `None`: runs of every DAG.
    pub dag_id: Option<String>,
    pub states: Vec<String>,
    pub run_types: Vec<String>,
    /// Case-insensitive substring of the run id (`%` and `_` are wildcards).
    pub run_id_pattern: Option<String>,
    pub logical_date: TimeRange,
    pub start_date: TimeRange,
    pub end_date: TimeRange,
    /// Airflow's `run_after`: when the run could start, the end of its data interval.
    pub run_after: TimeRange,
    /// Columns from [`run_order_column`], with `true` for descending.
    pub order_by: Vec<(&'static str, bool)>,
    pub limit: i64,
    pub offset: i64,
}

/// Which task instances to list.
#[derive(Clone, Debug, Default)]
pub struct TiFilter {
    /// `None`: of every DAG.
    pub dag_id: Option<String>,
    /// `None`: of every run.
    pub run_id: Option<String>,
    /// States; `none` matches undecided task instances.
    pub states: Vec<String>,
    pub task_id: Option<String>,
    pub pools: Vec<String>,
    pub map_index: Option<i64>,
    /// Columns from [`ti_order_column`], with `true` for descending.
    pub order_by: Vec<(&'static str, bool)>,
    pub limit: i64,
    pub offset: i64,
}

/// The column a task-instance list may be ordered by, for an Airflow field name.
pub fn ti_order_column(field: &str) -> Option<&'static str> {
    Some(match field {
        "id" => "id",
        "dag_id" => "dag_id",
        "run_id" | "dag_run_id" => "run_id",
        "task_id" => "task_id",
        "map_index" => "map_index",
        "state" => "state",
        "start_date" => "start_date",
        "end_date" => "end_date",
        "duration" => "duration_ms",
        "priority_weight" => "priority_weight",
        "try_number" => "try_number",
        "logical_date" => "logical_date",
        "pool" => "pool",
        _ => return None,
    })
}

/// The column a run list may be ordered by, for an Airflow field name.
pub fn run_order_column(field: &str) -> Option<&'static str> {
    Some(match field {
        "id" => "id",
        "state" => "state",
        "dag_id" => "dag_id",
        "run_id" | "dag_run_id" => "run_id",
        "run_type" => "run_type",
        "logical_date" => "logical_date",
        "run_after" | "data_interval_end" => "data_interval_end",
        "data_interval_start" => "data_interval_start",
        "start_date" => "start_date",
        "end_date" => "end_date",
        "queued_at" => "queued_at",
        _ => return None,
    })
}

/// Which task instances of a run an operation applies to.
#[derive(Clone, Debug, Default)]
pub struct TiSelector {
    /// `None`: every task. Each entry is a task id and, optionally, one map index.
    pub tasks: Option<Vec<(String, Option<i64>)>>,
    /// Only task instances that failed (`failed`, `upstream_failed`).
    pub only_failed: bool,
    /// Only running task instances.
    pub only_running: bool,
    /// Add every task upstream of the selected ones (transitively).
    pub include_upstream: bool,
    /// Add every task downstream of the selected ones (transitively).
    pub include_downstream: bool,
}

/// What re-evaluating a run decided: new states of undecided task instances, and the
/// run's final state when nothing in it can change any more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evaluation {
    pub decided: Vec<(i64, TiState)>,
    pub finished: Option<RunState>,
}

/// Decides, in topological order, every undecided task instance of a run whose
/// upstreams allow it (cascading), as the executor does when results arrive. `tis` are
/// (id, task_id, state) of every task instance of the run.
pub fn evaluate_run(dag: &Dag, tis: &[(i64, String, Option<TiState>)]) -> Evaluation {
    let mut states: HashMap<&str, Vec<(i64, Option<TiState>)>> = HashMap::new();
    for (id, task_id, st) in tis {
        states.entry(task_id.as_str()).or_default().push((*id, *st));
    }
    let mut out = Evaluation::default();
    for task in dag.tasks.values() {
        let mut counts = UpstreamCounts::default();
        for up in &task.upstream {
            for (_, st) in states.get(up.as_str()).into_iter().flatten() {
                counts.add(*st, 1);
            }
        }
        let Some(own) = states.get_mut(task.task_id.as_str()) else {
            continue;
        };
        if own.iter().all(|(_, st)| st.is_some()) {
            continue;
        }
        if let Some(new_state) = decide(task.trigger_rule, &counts).state() {
            for (id, st) in own.iter_mut().filter(|(_, st)| st.is_none()) {
                *st = Some(new_state);
                out.decided.push((*id, new_state));
            }
        }
    }
    let unfinished = states
        .values()
        .flatten()
        .any(|(_, st)| !st.is_some_and(TiState::is_finished));
    if !unfinished {
        // As in the executor: the run fails when a leaf failed.
        let leaf_failed = states.iter().any(|(task_id, tis)| {
            dag.downstream_of(task_id).is_empty()
                && tis.iter().any(|(_, st)| {
                    matches!(st, Some(TiState::Failed) | Some(TiState::UpstreamFailed))
                })
        });
        out.finished = Some(if leaf_failed {
            RunState::Failed
        } else {
            RunState::Success
        });
    }
    out
}

/// The task ids a selector names, with its upstream/downstream closure.
fn selected_tasks(dag: &Dag, sel: &TiSelector) -> Result<HashMap<String, Option<BTreeSet<i64>>>> {
    let mut chosen: HashMap<String, Option<BTreeSet<i64>>> = HashMap::new();
    match &sel.tasks {
        None => {
            for t in dag.tasks.keys() {
                chosen.insert(t.clone(), None);
            }
        }
        Some(list) => {
            for (task_id, map_index) in list {
                if dag.task(task_id).is_none() {
                    return Err(StoreError::NotFound {
                        what: format!("task {task_id} in DAG {}", dag.dag_id),
                    });
                }
                let entry = chosen
                    .entry(task_id.clone())
                    .or_insert_with(|| Some(BTreeSet::new()));
                match (entry.as_mut(), map_index) {
                    (Some(set), Some(i)) => {
                        set.insert(*i);
                    }
                    (_, None) => *entry = None,
                    (None, Some(_)) => {}
                }
            }
        }
    }
    let seeds: Vec<String> = chosen.keys().cloned().collect();
    let mut stack = Vec::new();
    if sel.include_downstream {
        stack.extend(
            seeds
                .iter()
                .flat_map(|t| dag.downstream_of(t).iter().cloned()),
        );
        while let Some(t) = stack.pop() {
            if chosen.insert(t.clone(), None).is_none() {
                stack.extend(dag.downstream_of(&t).iter().cloned());
            }
        }
    }
    if sel.include_upstream {
        stack.extend(
            seeds
                .iter()
                .filter_map(|t| dag.task(t))
                .flat_map(|t| t.upstream.iter().cloned()),
        );
        while let Some(t) = stack.pop() {
            let ups = dag.task(&t).map(|d| d.upstream.clone()).unwrap_or_default();
            if chosen.insert(t, None).is_none() {
                stack.extend(ups);
            }
        }
    }
    Ok(chosen)
}

fn matches_selector(
    ti: &TiRow,
    chosen: &HashMap<String, Option<BTreeSet<i64>>>,
    sel: &TiSelector,
) -> bool {
    let Some(indexes) = chosen.get(&ti.task_id) else {
        return false;
    };
    if let Some(set) = indexes {
        if !set.contains(&ti.map_index) {
            return false;
        }
    }
    if sel.only_failed && !matches!(ti.state.as_deref(), Some("failed" | "upstream_failed")) {
        return false;
    }
    if sel.only_running && ti.state.as_deref() != Some("running") {
        return false;
    }
    true
}

/// Lowercased `%pattern%` for a case-insensitive LIKE.
fn like_pattern(p: &str) -> String {
    format!("%{}%", p.to_lowercase())
}

/// Appends the WHERE clause of a [`RunFilter`] to a query builder (either backend).
macro_rules! push_run_filter {
    ($qb:expr, $f:expr) => {{
        let f = $f;
        $qb.push(" WHERE 1 = 1");
        if let Some(d) = &f.dag_id {
            $qb.push(" AND dag_id = ").push_bind(d.clone());
        }
        for (col, list) in [("state", &f.states), ("run_type", &f.run_types)] {
            if !list.is_empty() {
                $qb.push(format!(" AND {col} IN ("));
                let mut sep = $qb.separated(", ");
                for s in list {
                    sep.push_bind(s.clone());
                }
                $qb.push(")");
            }
        }
        if let Some(p) = &f.run_id_pattern {
            $qb.push(" AND LOWER(run_id) LIKE ")
                .push_bind(like_pattern(p));
        }
        for (col, r) in [
            ("logical_date", &f.logical_date),
            ("start_date", &f.start_date),
            ("end_date", &f.end_date),
            ("data_interval_end", &f.run_after),
        ] {
            for (op, v) in [(">=", r.gte), (">", r.gt), ("<=", r.lte), ("<", r.lt)] {
                if let Some(v) = v {
                    $qb.push(format!(" AND {col} {op} ")).push_bind(v);
                }
            }
        }
    }};
}

/// Appends the WHERE clause of a [`TiFilter`] to a query builder (either backend).
macro_rules! push_ti_filter {
    ($qb:expr, $f:expr) => {{
        let f = $f;
        $qb.push(" WHERE 1 = 1");
        if let Some(d) = &f.dag_id {
            $qb.push(" AND dag_id = ").push_bind(d.clone());
        }
        if let Some(r) = &f.run_id {
            $qb.push(" AND run_id = ").push_bind(r.clone());
        }
        if let Some(t) = &f.task_id {
            $qb.push(" AND task_id = ").push_bind(t.clone());
        }
        if let Some(m) = f.map_index {
            $qb.push(" AND map_index = ").push_bind(m);
        }
        if !f.pools.is_empty() {
            $qb.push(" AND pool IN (");
            let mut sep = $qb.separated(", ");
            for p in &f.pools {
                sep.push_bind(p.clone());
            }
            $qb.push(")");
        }
        if !f.states.is_empty() {
            let named: Vec<&String> = f.states.iter().filter(|s| s.as_str() != "none").collect();
            let none = named.len() < f.states.len();
            $qb.push(" AND (");
            if none {
                $qb.push("state IS NULL");
            }
            if !named.is_empty() {
                if none {
                    $qb.push(" OR ");
                }
                $qb.push("state IN (");
                let mut sep = $qb.separated(", ");
                for s in named {
                    sep.push_bind(s.clone());
                }
                $qb.push(")");
            }
            $qb.push(")");
        }
    }};
}

impl Store {
    // ---- users and shared secrets ----

    /// Creates a user; false when the username is taken.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: &str,
    ) -> Result<bool> {
        let n = with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO users (username, password_hash, role, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (username) DO NOTHING",
            )
            .bind(username)
            .bind(password_hash)
            .bind(role)
            .bind(now())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Replaces a user's password hash and role; false when there is no such user.
    pub async fn update_user(
        &self,
        username: &str,
        password_hash: &str,
        role: &str,
    ) -> Result<bool> {
        let n = with_pool!(&self.db, pool => {
            sqlx::query("UPDATE users SET password_hash = $2, role = $3 WHERE username = $1")
                .bind(username)
                .bind(password_hash)
                .bind(role)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    pub async fn user(&self, username: &str) -> Result<Option<UserRow>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, UserRow>(
                "SELECT username, password_hash, role, created_at FROM users WHERE username = $1",
            )
            .bind(username)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn users(&self) -> Result<Vec<UserRow>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, UserRow>(
                "SELECT username, password_hash, role, created_at FROM users ORDER BY username",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn user_count(&self) -> Result<i64> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(pool).await?
        }))
    }

    /// The shared secret `name`, created with `generate()` by the first process that
    /// asks (every later caller, in any process, gets the same value).
    pub async fn shared_secret(
        &self,
        name: &str,
        generate: impl FnOnce() -> String,
    ) -> Result<String> {
        let candidate = generate();
        Ok(with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO web_secret (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(&candidate)
            .bind(now())
            .execute(pool)
            .await?;
            sqlx::query_scalar::<_, String>("SELECT value FROM web_secret WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await?
        }))
    }

    // ---- reads ----

    /// Runs matching `filter`, one page of them, and how many match in all.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<(Vec<RunRow>, i64)> {
        let order: Vec<String> = if filter.order_by.is_empty() {
            vec!["id".to_string()]
        } else {
            filter
                .order_by
                .iter()
                .map(|(c, desc)| format!("{c}{}", if *desc { " DESC" } else { "" }))
                .collect()
        };
        let rows = with_pool!(&self.db, pool => {
            let mut qb = sqlx::QueryBuilder::<DbKind>::new(format!("SELECT {RUN_COLUMNS} FROM dag_run"));
            push_run_filter!(qb, filter);
            qb.push(format!(" ORDER BY {}, id LIMIT ", order.join(", ")));
            qb.push_bind(filter.limit.max(0));
            qb.push(" OFFSET ");
            qb.push_bind(filter.offset.max(0));
            let rows: Vec<RunRow> = qb.build_query_as().fetch_all(pool).await?;
            let mut count = sqlx::QueryBuilder::<DbKind>::new("SELECT COUNT(*) FROM dag_run");
            push_run_filter!(count, filter);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            (rows, total)
        });
        Ok(rows)
    }

    /// Task instances matching `filter`, one page of them, and how many match in all.
    pub async fn list_task_instances(&self, filter: &TiFilter) -> Result<(Vec<TiRow>, i64)> {
        let order: Vec<String> = filter
            .order_by
            .iter()
            .map(|(c, desc)| format!("{c}{}", if *desc { " DESC" } else { "" }))
            .chain(std::iter::once("id".to_string()))
            .collect();
        let rows = with_pool!(&self.db, pool => {
            let mut qb = sqlx::QueryBuilder::<DbKind>::new(format!("SELECT {TI_COLUMNS} FROM task_instance"));
            push_ti_filter!(qb, filter);
            qb.push(format!(" ORDER BY {} LIMIT ", order.join(", ")));
            qb.push_bind(filter.limit.max(0));
            qb.push(" OFFSET ");
            qb.push_bind(filter.offset.max(0));
            let rows: Vec<TiRow> = qb.build_query_as().fetch_all(pool).await?;
            let mut count = sqlx::QueryBuilder::<DbKind>::new("SELECT COUNT(*) FROM task_instance");
            push_ti_filter!(count, filter);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            (rows, total)
        });
        Ok(rows)
    }

    /// A task instance's row by its id.
    pub async fn task_instance(&self, ti_id: i64) -> Result<Option<TiRow>> {
        let q = format!("SELECT {TI_COLUMNS} FROM task_instance WHERE id = $1");
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as::<_, TiRow>(&q).bind(ti_id).fetch_optional(pool).await?
        }))
    }

    /// (id, version_number, created_at) of DAG versions by id.
    pub async fn dag_version_info(&self, id: i64) -> Result<Option<(i64, i64, DateTime<Utc>)>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as("SELECT id, version_number, created_at FROM dag_version WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// When each XCom of a run was written: (task_id, map_index, key) → time.
    pub async fn xcom_times(
        &self,
        run_pk: i64,
    ) -> Result<HashMap<(String, i64, String), DateTime<Utc>>> {
        let rows: Vec<(String, i64, String, DateTime<Utc>)> = with_pool!(&self.db, pool => {
            sqlx::query_as("SELECT task_id, map_index, key, created_at FROM xcom WHERE dag_run_id = $1")
                .bind(run_pk)
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(t, m, k, at)| ((t, m, k), at))
            .collect())
    }

    /// The latest start of each DAG's runs, and how many runs of each are active.
    pub async fn run_summaries(&self) -> Result<HashMap<String, (Option<DateTime<Utc>>, i64)>> {
        let rows = with_pool!(&self.db, pool => {
            sqlx::query(
                "SELECT dag_id, MAX(start_date), \
                 CAST(SUM(CASE WHEN state IN ('queued', 'running') THEN 1 ELSE 0 END) AS BIGINT) \
                 FROM dag_run GROUP BY dag_id",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| (r.get::<String, _>(0), (r.get::<Option<DateTime<Utc>>, _>(1), r.get::<Option<i64>, _>(2).unwrap_or(0))))
            .collect::<HashMap<_, _>>()
        });
        Ok(rows)
    }

    /// Slots of each pool taken by (queued, running, scheduled) task instances.
    pub async fn pool_usage(&self) -> Result<HashMap<String, (i64, i64, i64)>> {
        let rows: Vec<(String, Option<String>, i64)> = with_pool!(&self.db, pool => {
            sqlx::query_as(
                "SELECT pool, state, CAST(SUM(pool_slots) AS BIGINT) FROM task_instance \
                 WHERE state IN ('queued', 'running', 'scheduled') GROUP BY pool, state",
            )
            .fetch_all(pool)
            .await?
        });
        let mut out: HashMap<String, (i64, i64, i64)> = HashMap::new();
        for (pool, state, n) in rows {
            let e = out.entry(pool).or_default();
            match state.as_deref() {
                Some("queued") => e.0 += n,
                Some("running") => e.1 += n,
                _ => e.2 += n,
            }
        }
        Ok(out)
    }

    /// The last heartbeat of a live scheduler process, if any.
    pub async fn latest_heartbeat(&self, role: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar(
                "SELECT MAX(heartbeat_at) FROM worker WHERE role = $1 AND stopped_at IS NULL",
            )
            .bind(role)
            .fetch_one(pool)
            .await?
        }))
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(&self.db, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    // ---- writes ----

    pub async fn delete_pool(&self, name: &str) -> Result<bool> {
        if name == "default_pool" {
            return Err(StoreError::Invalid("default_pool cannot be deleted".into()));
        }
        let n = with_pool!(&self.db, pool => {
            sqlx::query("DELETE FROM pool WHERE name = $1").bind(name).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Replaces a run's note.
    pub async fn set_run_note(&self, run_pk: i64, note: Option<&str>) -> Result<()> {
        with_pool!(&self.db, pool => {
            sqlx::query("UPDATE dag_run SET note = $2 WHERE id = $1")
                .bind(run_pk)
                .bind(note)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Deletes a run with its task instances, tries and XComs. A try still running
    /// sees its run gone and its result is dropped.
    pub async fn delete_run(&self, run_pk: i64, actor: &str) -> Result<bool> {
        let n = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let run: Option<(String, String)> =
                sqlx::query_as("SELECT dag_id, run_id FROM dag_run WHERE id = $1")
                    .bind(run_pk)
                    .fetch_optional(&mut *tx)
                    .await?;
            let n = sqlx::query("DELETE FROM dag_run WHERE id = $1")
                .bind(run_pk)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if let Some((dag_id, run_id)) = run {
                sqlx::query(
                    "INSERT INTO audit_log (at, event, dag_id, run_id, actor) VALUES ($1, 'delete_run', $2, $3, $4)",
                )
                .bind(now())
                .bind(dag_id)
                .bind(run_id)
                .bind(actor)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            n
        });
        Ok(n > 0)
    }

    /// Clears the selected task instances of a run so they run again (see the module
    /// doc). Returns them as selected (dry run) or as cleared.
    pub async fn clear_task_instances(
        &self,
        run_pk: i64,
        sel: &TiSelector,
        dry_run: bool,
        actor: &str,
    ) -> Result<Vec<TiRow>> {
        let run = self
            .run_by_pk(run_pk)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("DAG run {run_pk}"),
            })?;
        let dag = self.dag_version(run.dag_version_id).await?;
        let chosen = selected_tasks(&dag, sel)?;
        let lock = self.dialect.for_update();
        let ti_q =
            format!("SELECT {TI_COLUMNS} FROM task_instance WHERE dag_run_id = $1 ORDER BY id");
        let ts = now();
        let cleared = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(&format!("SELECT id FROM dag_run WHERE id = $1{lock}"))
                .bind(run_pk)
                .execute(&mut *tx)
                .await?;
            let tis: Vec<TiRow> = sqlx::query_as(&ti_q).bind(run_pk).fetch_all(&mut *tx).await?;
            let targets: Vec<TiRow> = tis.iter().filter(|t| matches_selector(t, &chosen, sel)).cloned().collect();
            if dry_run || targets.is_empty() {
                tx.rollback().await?;
                return Ok(targets);
            }
            for ti in &targets {
                if ti.state.as_deref() == Some("running") {
                    sqlx::query(
                        "UPDATE task_try SET state = 'failed', end_date = $2, \
                         error = 'cleared while running' WHERE ti_id = $1 AND state = 'running'",
                    )
                    .bind(ti.id)
                    .bind(ts)
                    .execute(&mut *tx)
                    .await?;
                }
                let retries = dag.task(&ti.task_id).map(|t| i64::from(t.retry.retries)).unwrap_or(0);
                sqlx::query(
                    "UPDATE task_instance SET state = NULL, owner = NULL, lease = NULL, \
                     end_date = NULL, duration_ms = NULL, next_try_at = NULL, error = NULL, \
                     scheduled_at = NULL, max_tries = $2 WHERE id = $1",
                )
                .bind(ti.id)
                .bind(ti.try_number + retries + 1)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM xcom WHERE dag_run_id = $1 AND task_id = $2 AND map_index = $3")
                    .bind(run_pk)
                    .bind(&ti.task_id)
                    .bind(ti.map_index)
                    .execute(&mut *tx)
                    .await?;
            }
            let ids: BTreeSet<i64> = targets.iter().map(|t| t.id).collect();
            let states: Vec<(i64, String, Option<TiState>)> = tis
                .iter()
                .map(|t| {
                    let st = if ids.contains(&t.id) { None } else { t.ti_state() };
                    (t.id, t.task_id.clone(), st)
                })
                .collect();
            let eval = evaluate_run(&dag, &states);
            for (id, st) in &eval.decided {
                apply_decision!(tx, *id, *st, ts);
            }
            let new_run_state = match eval.finished {
                Some(done) => done,
                None if matches!(run.state.as_str(), "success" | "failed") => RunState::Queued,
                None => RunState::parse(&run.state).unwrap_or(RunState::Queued),
            };
            set_run_state_row!(tx, run_pk, new_run_state, ts);
            sqlx::query(
                "INSERT INTO audit_log (at, event, dag_id, run_id, actor, detail) VALUES ($1, 'clear', $2, $3, $4, $5)",
            )
            .bind(ts)
            .bind(&run.dag_id)
            .bind(&run.run_id)
            .bind(actor)
            .bind(serde_json::to_string(&targets.iter().map(|t| (&t.task_id, t.map_index)).collect::<Vec<_>>()).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
            let after: Vec<TiRow> = sqlx::query_as(&ti_q).bind(run_pk).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            after.into_iter().filter(|t| ids.contains(&t.id)).collect::<Vec<_>>()
        });
        Ok(cleared)
    }

    /// Sets the selected task instances of a run to `new_state` (success, failed,
    /// skipped), stopping running tries, then decides what that lets run next and
    /// finishes (or re-queues) the run accordingly. Returns the task instances it
    /// changed, and the run's new state when this finished a run that was not.
    pub async fn set_task_instance_state(
        &self,
        run_pk: i64,
        sel: &TiSelector,
        new_state: TiState,
        dry_run: bool,
        actor: &str,
    ) -> Result<(Vec<TiRow>, Option<RunState>)> {
        if !new_state.is_finished() {
            return Err(StoreError::Invalid(format!(
                "a task instance can be set to success, failed or skipped, not {new_state}"
            )));
        }
        let run = self
            .run_by_pk(run_pk)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: format!("DAG run {run_pk}"),
            })?;
        let dag = self.dag_version(run.dag_version_id).await?;
        let chosen = selected_tasks(&dag, sel)?;
        let lock = self.dialect.for_update();
        let ti_q =
            format!("SELECT {TI_COLUMNS} FROM task_instance WHERE dag_run_id = $1 ORDER BY id");
        let ts = now();
        let changed = with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(&format!("SELECT id FROM dag_run WHERE id = $1{lock}"))
                .bind(run_pk)
                .execute(&mut *tx)
                .await?;
            let tis: Vec<TiRow> = sqlx::query_as(&ti_q).bind(run_pk).fetch_all(&mut *tx).await?;
            let targets: Vec<TiRow> = tis
                .iter()
                .filter(|t| matches_selector(t, &chosen, sel) && t.state.as_deref() != Some(new_state.as_str()))
                .cloned()
                .collect();
            if dry_run || targets.is_empty() {
                tx.rollback().await?;
                return Ok((targets, None));
            }
            for ti in &targets {
                sqlx::query(
                    "UPDATE task_try SET state = $3, end_date = $2, \
                     error = CASE WHEN $3 = 'success' THEN error ELSE 'set by an operator' END \
                     WHERE ti_id = $1 AND state = 'running'",
                )
                .bind(ti.id)
                .bind(ts)
                .bind(new_state.as_str())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE task_instance SET state = $2, owner = NULL, lease = NULL, next_try_at = NULL, \
                     end_date = $3 WHERE id = $1",
                )
                .bind(ti.id)
                .bind(new_state.as_str())
                .bind(ts)
                .execute(&mut *tx)
                .await?;
            }
            let ids: BTreeSet<i64> = targets.iter().map(|t| t.id).collect();
            let states: Vec<(i64, String, Option<TiState>)> = tis
                .iter()
                .map(|t| {
                    let st = if ids.contains(&t.id) { Some(new_state) } else { t.ti_state() };
                    (t.id, t.task_id.clone(), st)
                })
                .collect();
            let eval = evaluate_run(&dag, &states);
            for (id, st) in &eval.decided {
                apply_decision!(tx, *id, *st, ts);
            }
            let new_run_state = match eval.finished {
                Some(done) => done,
                None if matches!(run.state.as_str(), "success" | "failed") => RunState::Queued,
                None => RunState::parse(&run.state).unwrap_or(RunState::Queued),
            };
            set_run_state_row!(tx, run_pk, new_run_state, ts);
            sqlx::query(
                "INSERT INTO audit_log (at, event, dag_id, run_id, actor, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(ts)
            .bind(format!("set_{}", new_state.as_str()))
            .bind(&run.dag_id)
            .bind(&run.run_id)
            .bind(actor)
            .bind(serde_json::to_string(&targets.iter().map(|t| (&t.task_id, t.map_index)).collect::<Vec<_>>()).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
            let after: Vec<TiRow> = sqlx::query_as(&ti_q).bind(run_pk).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            let finished = eval.finished.filter(|done| done.as_str() != run.state);
            (after.into_iter().filter(|t| ids.contains(&t.id)).collect::<Vec<_>>(), finished)
        });
        Ok(changed)
    }

    /// Sets a run's state as Airflow's "mark success / failed / queued" does:
    /// success marks every unfinished task instance successful; failed fails the
    /// running ones and skips the rest; queued clears the whole run so it runs again.
    /// Returns whether the run entered a finished state it was not already in (what
    /// the runs-finished metric counts).
    pub async fn set_run_state(&self, run_pk: i64, state: RunState, actor: &str) -> Result<bool> {
        if state == RunState::Queued {
            self.clear_task_instances(run_pk, &TiSelector::default(), false, actor)
                .await?;
            // A run with nothing to clear (no task instances yet) is queued as is.
            with_pool!(&self.db, pool => {
                sqlx::query("UPDATE dag_run SET state = 'queued', end_date = NULL WHERE id = $1 AND state <> 'running'")
                    .bind(run_pk)
                    .execute(pool)
                    .await?;
            });
            return Ok(false);
        }
        if state == RunState::Running {
            return Err(StoreError::Invalid(
                "a run can be set to success, failed or queued".into(),
            ));
        }
        let lock = self.dialect.for_update();
        let ts = now();
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            let run: Option<(String, String, String)> = sqlx::query_as(&format!(
                "SELECT dag_id, run_id, state FROM dag_run WHERE id = $1{lock}"
            ))
            .bind(run_pk)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((dag_id, run_id, before)) = run else {
                return Err(StoreError::NotFound { what: format!("DAG run {run_pk}") });
            };
            let (running_to, others_to) = match state {
                RunState::Success => ("success", "success"),
                _ => ("failed", "skipped"),
            };
            sqlx::query(
                "UPDATE task_try SET state = $3, end_date = $2 WHERE state = 'running' AND ti_id IN \
                 (SELECT id FROM task_instance WHERE dag_run_id = $1 AND state = 'running')",
            )
            .bind(run_pk)
            .bind(ts)
            .bind(running_to)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE task_instance SET state = $3, end_date = $2, owner = NULL, lease = NULL \
                 WHERE dag_run_id = $1 AND state = 'running'",
            )
            .bind(run_pk)
            .bind(ts)
            .bind(running_to)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE task_instance SET state = $3, end_date = $2, next_try_at = NULL \
                 WHERE dag_run_id = $1 AND (state IS NULL OR state IN ('scheduled', 'queued', 'up_for_retry'))",
            )
            .bind(run_pk)
            .bind(ts)
            .bind(others_to)
            .execute(&mut *tx)
            .await?;
            set_run_state_row!(tx, run_pk, state, ts);
            sqlx::query(
                "INSERT INTO audit_log (at, event, dag_id, run_id, actor) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(ts)
            .bind(format!("mark_run_{}", state.as_str()))
            .bind(dag_id)
            .bind(run_id)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(before != state.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Noop;
    impl sluice_core::loader::KindRegistry for Noop {
        fn kind_keys(&self, kind: &str) -> Option<sluice_core::loader::KindKeys> {
            (kind == "noop").then_some(sluice_core::loader::KindKeys {
                allowed: &[],
                required: &[],
            })
        }
        fn kind_names(&self) -> Vec<&'static str> {
            vec!["noop"]
        }
    }

    fn dag() -> Dag {
        let text = "[dag]\nid = \"d\"\n[tasks.a]\nkind = \"noop\"\n\
                    [tasks.b]\nkind = \"noop\"\nupstream = [\"a\"]\n\
                    [tasks.c]\nkind = \"noop\"\nupstream = [\"b\"]\n";
        sluice_core::loader::parse_dag(text, std::path::Path::new("d.toml"), &Noop)
            .unwrap_or_else(|d| panic!("bad test DAG: {d:?}"))
    }

    #[test]
    fn cleared_chain_schedules_only_its_first_ready_task() {
        let dag = dag();
        let s = Some(TiState::Success);
        // b and c cleared, a done: b runs, c waits for it.
        let e = evaluate_run(
            &dag,
            &[
                (1, "a".into(), s),
                (2, "b".into(), None),
                (3, "c".into(), None),
            ],
        );
        assert_eq!(e.decided, vec![(2, TiState::Scheduled)]);
        assert_eq!(e.finished, None);
        // Everything cleared: only the root runs.
        let e = evaluate_run(
            &dag,
            &[
                (1, "a".into(), None),
                (2, "b".into(), None),
                (3, "c".into(), None),
            ],
        );
        assert_eq!(e.decided, vec![(1, TiState::Scheduled)]);
    }

    #[test]
    fn marking_failed_cascades_and_finishes_the_run() {
        let dag = dag();
        let f = Some(TiState::Failed);
        let e = evaluate_run(
            &dag,
            &[
                (1, "a".into(), f),
                (2, "b".into(), None),
                (3, "c".into(), None),
            ],
        );
        assert_eq!(
            e.decided,
            vec![(2, TiState::UpstreamFailed), (3, TiState::UpstreamFailed)]
        );
        assert_eq!(e.finished, Some(RunState::Failed));
        let s = Some(TiState::Success);
        let e = evaluate_run(
            &dag,
            &[(1, "a".into(), s), (2, "b".into(), s), (3, "c".into(), s)],
        );
        assert_eq!(e.finished, Some(RunState::Success));
    }
}
