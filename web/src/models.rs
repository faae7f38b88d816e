//! Response shapes shared by several resources, and helpers to build them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sluice_store::{RunRow, Store};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

/// Airflow identifies task instances and DAG versions by UUID; Sluice by integer ids.
/// This UUID holds the id (and a kind, so a version's id never equals a task
/// instance's).
pub fn uuid_of(kind: u32, id: i64) -> String {
    format!(
        "{kind:08x}-0000-4000-8000-{:012x}",
        id as u64 & 0xffff_ffff_ffff
    )
}

pub const UUID_TI: u32 = 1;
pub const UUID_VERSION: u32 = 2;

/// A DAG version.
#[derive(Clone, Serialize, ToSchema)]
pub struct DagVersionResponse {
    /// UUID form of the version's id.
    pub id: String,
    pub version_number: i64,
    pub dag_id: String,
    pub bundle_name: Option<String>,
    pub bundle_version: Option<String>,
    pub created_at: DateTime<Utc>,
    pub dag_display_name: String,
    pub bundle_url: Option<String>,
}

pub async fn dag_version(
    store: &Store,
    dag_id: &str,
    id: i64,
) -> ApiResult<Option<DagVersionResponse>> {
    Ok(store
        .dag_version_info(id)
        .await?
        .map(|(id, number, created_at)| DagVersionResponse {
            id: uuid_of(UUID_VERSION, id),
            version_number: number,
            dag_id: dag_id.to_string(),
            bundle_name: None,
            bundle_version: None,
            created_at,
            dag_display_name: dag_id.to_string(),
            bundle_url: None,
        }))
}

/// The run, or a 404 naming it.
pub async fn find_run(store: &Store, dag_id: &str, run_id: &str) -> ApiResult<RunRow> {
    store.run(dag_id, run_id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "The DagRun with dag_id: `{dag_id}` and run_id: `{run_id}` was not found"
        ))
    })
}

/// The DAG's store row, or a 404 naming it.
pub async fn find_dag(store: &Store, dag_id: &str) -> ApiResult<sluice_store::DagRow> {
    store
        .dag(dag_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Dag with id {dag_id} was not found")))
}

/// A page of `items`.
pub fn paginate<T>(items: Vec<T>, limit: i64, offset: i64) -> Vec<T> {
    items
        .into_iter()
        .skip(offset.max(0) as usize)
        .take(limit.max(0) as usize)
        .collect()
}

/// Seconds between two instants, as Airflow's `duration`.
pub fn seconds(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Option<f64> {
    match (start, end) {
        (Some(s), Some(e)) => Some((e - s).num_microseconds().unwrap_or(0) as f64 / 1e6),
        _ => None,
    }
}
