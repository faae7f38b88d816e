//! The only SQL that differs between the backends.
//!
//! List parameters are always bound as one JSON array in a text parameter, so the same
//! Rust code binds them on both backends; each dialect unpacks it its own way.

use crate::Dialect;

impl Dialect {
    /// Row lock for the end of a `SELECT`. SQLite has none: there a write transaction
    /// (`BEGIN IMMEDIATE`) already excludes every other writer.
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        }
    }

    /// Skip rows another claimer holds instead of waiting for them.
    pub(crate) fn for_update_skip_locked(self, table: &str) -> String {
        match self {
            Dialect::Postgres => format!(" FOR UPDATE OF {table} SKIP LOCKED"),
            Dialect::Sqlite => String::new(),
        }
    }

    /// Membership in a JSON array of integers bound at `$n` (`col {this}`; negate as
    /// `NOT (col {this})`).
    pub(crate) fn in_int_list(self, n: usize) -> String {
        match self {
            Dialect::Postgres => {
                // ANY(ARRAY(…)) lets the planner probe an index per element; a
                // plain IN (SELECT …) over an unanalysed table can turn into a
                // nested-loop scan.
                format!("= ANY(ARRAY(SELECT jsonb_array_elements_text(${n}::jsonb)::bigint))")
            }
            Dialect::Sqlite => format!("IN (SELECT value FROM json_each(${n}))"),
        }
    }

    /// Membership in a JSON array of strings bound at `$n`.
    pub(crate) fn in_text_list(self, n: usize) -> String {
        match self {
            Dialect::Postgres => {
                format!("= ANY(ARRAY(SELECT jsonb_array_elements_text(${n}::jsonb)))")
            }
            Dialect::Sqlite => format!("IN (SELECT value FROM json_each(${n}))"),
        }
    }
}

impl Dialect {
    /// A row source `v` over a JSON array of objects bound at `$n`, with the given
    /// columns (name, PostgreSQL type): one statement updates many rows, each with its
    /// own values (`UPDATE … FROM {this} WHERE t.id = v.id`).
    pub(crate) fn json_rows(self, n: usize, cols: &[(&str, &str)]) -> String {
        match self {
            Dialect::Postgres => format!(
                "jsonb_to_recordset(${n}::jsonb) AS v({})",
                cols.iter()
                    .map(|(c, t)| format!("{c} {t}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Dialect::Sqlite => format!(
                "(SELECT {} FROM json_each(${n})) AS v",
                cols.iter()
                    .map(|(c, _)| format!("json_extract(value, '$.{c}') AS {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Timestamps inside JSON parameters, in the text form both backends read back
/// (sqlx's own SQLite encoding; PostgreSQL parses it as timestamptz).
pub(crate) fn json_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Task-instance states that hold a slot (pool, max_active_tasks, parallelism).
pub(crate) const ACTIVE_TI_STATES: &str = "('queued', 'running')";

/// Task-instance states that keep a run from finishing.
pub(crate) const UNFINISHED_TI: &str =
    "(state IS NULL OR state IN ('scheduled', 'queued', 'running', 'up_for_retry'))";

pub(crate) const TI_COLUMNS: &str = "id, dag_run_id, dag_id, run_id, task_id, map_index, state, \
     try_number, max_tries, pool, pool_slots, priority_weight, logical_date, scheduled_at, \
     start_date, end_date, duration_ms, next_try_at, owner, lease, hostname, error";

pub(crate) const RUN_COLUMNS: &str = "id, dag_id, run_id, dag_version_id, run_type, state, \
     logical_date, data_interval_start, data_interval_end, conf, max_active_tasks, queued_at, \
     start_date, end_date, timeout_at, note";

pub(crate) fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_string())
}
