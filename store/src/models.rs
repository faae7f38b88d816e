//! Rows as the store returns them.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::state::{RunState, TiState};

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct DagRow {
    pub dag_id: String,
    pub is_paused: bool,
    pub is_active: bool,
    pub fileloc: String,
    pub latest_version_id: Option<i64>,
    pub description: Option<String>,
    pub schedule: String,
    pub timezone: String,
    /// JSON array of strings.
    pub tags: String,
    pub max_active_runs: i64,
    pub updated_at: DateTime<Utc>,
}

impl DagRow {
    pub fn tag_list(&self) -> Vec<String> {
        serde_json::from_str(&self.tags).unwrap_or_default()
    }
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub dag_id: String,
    pub run_id: String,
    pub dag_version_id: i64,
    pub run_type: String,
    pub state: String,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    /// JSON object.
    pub conf: String,
    pub max_active_tasks: i64,
    pub queued_at: DateTime<Utc>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub timeout_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
}

impl RunRow {
    pub fn run_state(&self) -> Option<RunState> {
        RunState::parse(&self.state)
    }

    pub fn conf_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.conf).unwrap_or_else(|_| serde_json::json!({}))
    }
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct TiRow {
    pub id: i64,
    pub dag_run_id: i64,
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
    pub state: Option<String>,
    pub try_number: i64,
    pub max_tries: i64,
    pub pool: String,
    pub pool_slots: i64,
    pub priority_weight: i64,
    pub logical_date: DateTime<Utc>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub next_try_at: Option<DateTime<Utc>>,
    pub owner: Option<String>,
    pub lease: Option<String>,
    pub hostname: Option<String>,
    pub error: Option<String>,
}

impl TiRow {
    pub fn ti_state(&self) -> Option<TiState> {
        self.state.as_deref().and_then(TiState::parse)
    }

    /// Airflow prints an undecided task instance as "none".
    pub fn state_label(&self) -> &str {
        self.state.as_deref().unwrap_or("none")
    }
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct TryRow {
    pub ti_id: i64,
    pub try_number: i64,
    pub state: String,
    pub start_date: DateTime<Utc>,
    pub end_date: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub owner: String,
    pub hostname: String,
    /// Relative to `$SLUICE_HOME/logs`.
    pub log_path: String,
    pub error: Option<String>,
    pub records_in: Option<i64>,
    pub records_out: Option<i64>,
    pub bytes_in: Option<i64>,
    pub bytes_out: Option<i64>,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ImportErrorRow {
    pub fileloc: String,
    /// JSON array of diagnostics.
    pub errors: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct PoolRow {
    pub name: String,
    pub slots: i64,
    pub description: Option<String>,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct VariableRow {
    pub key: String,
    pub value: String,
    pub description: Option<String>,
}

/// A new DAG run to create.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub dag_id: String,
    pub run_id: String,
    pub run_type: RunType,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub conf: serde_json::Value,
}

impl NewRun {
    /// A manual run at `logical_date`, covering the instant itself unless `interval`
    /// says otherwise.
    pub fn manual(
        dag_id: &str,
        logical_date: DateTime<Utc>,
        interval: Option<(DateTime<Utc>, DateTime<Utc>)>,
        conf: serde_json::Value,
    ) -> NewRun {
        let (start, end) = interval.unwrap_or((logical_date, logical_date));
        NewRun {
            dag_id: dag_id.to_string(),
            run_id: RunType::Manual.run_id(logical_date),
            run_type: RunType::Manual,
            logical_date,
            data_interval_start: start,
            data_interval_end: end,
            conf,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunType {
    Scheduled,
    Manual,
    Backfill,
}

impl RunType {
    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Scheduled => "scheduled",
            RunType::Manual => "manual",
            RunType::Backfill => "backfill",
        }
    }

    /// Airflow's run id: `scheduled__2024-08-01T00:00:00+00:00`.
    pub fn run_id(self, logical_date: DateTime<Utc>) -> String {
        format!(
            "{}__{}",
            self.as_str(),
            logical_date.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
        )
    }
}
