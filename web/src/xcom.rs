//! XCom entries of a task instance: the JSON value each task returned (key
//! `return_value`), read from the database or, for large values, the artifact store.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_store::{RunRow, XcomRow, XcomValue};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult, HTTPExceptionResponse, HTTPValidationError};
use crate::extract::{self, Query};
use crate::models;
use crate::AppState;

/// An XCom's value, with every known secret and password masked (a task may have
/// returned one); as a JSON string of its text when `stringify`.
pub(crate) async fn masked_value(
    state: &AppState,
    row: &XcomRow,
    stringify: bool,
) -> ApiResult<Value> {
    let value: Value = match &row.value {
        XcomValue::Inline(text) => serde_json::from_str(text)
            .map_err(|e| ApiError::internal(format!("stored XCom is not JSON: {e}")))?,
        XcomValue::Artifact { path, .. } => {
            let full = state.cfg.artifacts_dir.join(path);
            let bytes = tokio::fs::read(&full).await.map_err(|e| {
                ApiError::internal(format!("cannot read XCom artifact {}: {e}", full.display()))
            })?;
            serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::internal(format!("XCom artifact {} is not JSON: {e}", full.display()))
            })?
        }
    };
    // A task may have returned a secret or a password: never show one.
    let masker = crate::connections::masker(state).await?;
    let text = value.to_string();
    let masked = masker.mask(&text);
    let value = if stringify {
        Value::String(masked)
    } else if masked == text {
        value
    } else {
        serde_json::from_str(&masked).unwrap_or(Value::String(masked))
    };
    Ok(value)
}

/// An XCom entry without its value, as Airflow's `XComResponse`.
#[derive(Serialize, ToSchema)]
pub struct XComResponse {
    pub key: String,
    pub timestamp: DateTime<Utc>,
    pub logical_date: Option<DateTime<Utc>>,
    pub map_index: i64,
    pub task_id: String,
    pub dag_id: String,
    pub run_id: String,
    pub dag_display_name: String,
    pub task_display_name: String,
    pub run_after: DateTime<Utc>,
}

/// An XCom entry with its value, as Airflow's `XComResponseNative`.
#[derive(Serialize, ToSchema)]
pub struct XComResponseNative {
    #[serde(flatten)]
    pub entry: XComResponse,
    /// The JSON value (a string when `stringify=true`).
    pub value: Value,
}

#[derive(Serialize, ToSchema)]
pub struct XComCollectionResponse {
    pub xcom_entries: Vec<XComResponse>,
    pub total_entries: i64,
}

fn entry(run: &RunRow, x: &XcomRow, at: Option<DateTime<Utc>>) -> XComResponse {
    XComResponse {
        key: x.key.clone(),
        timestamp: at.unwrap_or(run.queued_at),
        logical_date: Some(run.logical_date),
        map_index: x.map_index,
        task_id: x.task_id.clone(),
        dag_id: run.dag_id.clone(),
        run_id: run.run_id.clone(),
        dag_display_name: run.dag_id.clone(),
        task_display_name: x.task_id.clone(),
        run_after: run.data_interval_end,
    }
}

async fn xcoms_of(state: &AppState, run: &RunRow, task_id: &str) -> ApiResult<Vec<XcomRow>> {
    let filter = (task_id != "~").then(|| vec![task_id.to_string()]);
    Ok(state.store.xcoms(run.id, filter.as_deref()).await?)
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct XcomEntriesQuery {
    xcom_key: Option<String>,
    #[param(value_type = Option<i64>)]
    map_index: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    limit: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
}

/// List the XCom entries of a task instance (`~` as task_id: of every task of the run).
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries",
    tag = "XCom",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), XcomEntriesQuery),
    responses(
        (status = 200, description = "XCom entries (without values)", body = XComCollectionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_xcom_entries(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(q): Query<XcomEntriesQuery>,
) -> ApiResult<Json<XComCollectionResponse>> {
    let (limit, offset) = extract::page(&q.limit, &q.offset)?;
    let map_index = extract::int("map_index", &q.map_index, -1)?;
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    let times = state.store.xcom_times(run.id).await?;
    let rows: Vec<XcomRow> = xcoms_of(&state, &run, &task_id)
        .await?
        .into_iter()
        .filter(|x| q.xcom_key.as_ref().is_none_or(|k| &x.key == k))
        .filter(|x| map_index.is_none_or(|m| x.map_index == m))
        .collect();
    let total = rows.len() as i64;
    let entries = models::paginate(rows, limit, offset)
        .iter()
        .map(|x| {
            entry(
                &run,
                x,
                times
                    .get(&(x.task_id.clone(), x.map_index, x.key.clone()))
                    .copied(),
            )
        })
        .collect();
    Ok(Json(XComCollectionResponse {
        xcom_entries: entries,
        total_entries: total,
    }))
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct XcomEntryQuery {
    /// Default -1 (not mapped).
    #[param(value_type = Option<i64>)]
    map_index: Option<String>,
    /// Values are JSON already: accepted and ignored.
    #[param(value_type = Option<bool>)]
    deserialize: Option<String>,
    /// Return the value as a string (its JSON text).
    #[param(value_type = Option<bool>)]
    stringify: Option<String>,
}

/// Get one XCom entry with its value.
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}",
    tag = "XCom",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("xcom_key" = String, Path), XcomEntryQuery),
    responses(
        (status = 200, description = "The entry and its value", body = XComResponseNative),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_xcom_entry(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id, key)): Path<(String, String, String, String)>,
    Query(q): Query<XcomEntryQuery>,
) -> ApiResult<Json<XComResponseNative>> {
    let map_index = extract::int("map_index", &q.map_index, -1)?.unwrap_or(-1);
    extract::boolean("deserialize", &q.deserialize)?;
    let stringify = extract::boolean("stringify", &q.stringify)?.unwrap_or(false);
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    let row = xcoms_of(&state, &run, &task_id)
        .await?
        .into_iter()
        .find(|x| x.key == key && x.map_index == map_index)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "XCom entry with key: `{key}` not found for task `{task_id}` (map index {map_index}) of run `{run_id}`"
            ))
        })?;
    let value = masked_value(&state, &row, stringify).await?;
    let times = state.store.xcom_times(run.id).await?;
    let at = times
        .get(&(row.task_id.clone(), row.map_index, row.key.clone()))
        .copied();
    Ok(Json(XComResponseNative {
        entry: entry(&run, &row, at),
        value,
    }))
}
