//! `/api/v2/dags/{dag_id}/dagRuns`: list (`~` for every DAG), trigger, get, mark,
//! delete, clear.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_store::{now, NewRun, RunFilter, RunRow, RunState, RunType, TiSelector, TimeRange};
use utoipa::{IntoParams, ToSchema};

use crate::auth::User;
use crate::dags::UpdateMaskQuery;
use crate::error::{ApiError, ApiResult, HTTPExceptionResponse, HTTPValidationError};
use crate::extract::{self, JsonBody, Query};
use crate::models::{self, seconds, DagVersionResponse};
use crate::task_instances::{ti_responses, TaskInstanceCollectionResponse};
use crate::AppState;

/// A DAG run, as Airflow's `DAGRunResponse`.
#[derive(Serialize, ToSchema)]
pub struct DAGRunResponse {
    pub dag_run_id: String,
    pub dag_id: String,
    pub dag_display_name: String,
    pub logical_date: Option<DateTime<Utc>>,
    pub queued_at: Option<DateTime<Utc>>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    /// Seconds from start to end.
    pub duration: Option<f64>,
    pub data_interval_start: Option<DateTime<Utc>>,
    pub data_interval_end: Option<DateTime<Utc>>,
    /// When the run could start: the end of its data interval.
    pub run_after: DateTime<Utc>,
    pub last_scheduling_decision: Option<DateTime<Utc>>,
    /// `scheduled`, `manual` or `backfill`.
    pub run_type: String,
    /// `queued`, `running`, `success` or `failed`.
    pub state: String,
    pub triggered_by: Option<String>,
    pub triggering_user_name: Option<String>,
    pub conf: Option<Value>,
    pub note: Option<String>,
    pub dag_versions: Vec<DagVersionResponse>,
    pub bundle_version: Option<String>,
    pub partition_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DAGRunCollectionResponse {
    pub dag_runs: Vec<DAGRunResponse>,
    pub total_entries: i64,
}

pub(crate) async fn run_response(state: &AppState, run: &RunRow) -> ApiResult<DAGRunResponse> {
    let version = models::dag_version(&state.store, &run.dag_id, run.dag_version_id).await?;
    Ok(DAGRunResponse {
        dag_run_id: run.run_id.clone(),
        dag_id: run.dag_id.clone(),
        dag_display_name: run.dag_id.clone(),
        logical_date: Some(run.logical_date),
        queued_at: Some(run.queued_at),
        start_date: run.start_date,
        end_date: run.end_date,
        duration: seconds(run.start_date, run.end_date),
        data_interval_start: Some(run.data_interval_start),
        data_interval_end: Some(run.data_interval_end),
        run_after: run.data_interval_end,
        last_scheduling_decision: None,
        run_type: run.run_type.clone(),
        state: run.state.clone(),
        triggered_by: match run.run_type.as_str() {
            "scheduled" => Some("timetable".into()),
            "backfill" => Some("backfill".into()),
            _ => None,
        },
        triggering_user_name: None,
        conf: Some(run.conf_json()),
        note: run.note.clone(),
        dag_versions: version.into_iter().collect(),
        bundle_version: None,
        partition_key: None,
    })
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct DagRunsQuery {
    #[param(value_type = Option<i64>, minimum = 0)]
    limit: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
    /// `id`, `state`, `dag_id`, `run_id`, `logical_date`, `run_after`, `start_date`, `end_date`, `queued_at`; `-` for descending.
    #[serde(default)]
    order_by: Vec<String>,
    /// Runs in any of these states.
    #[serde(default)]
    state: Vec<String>,
    #[serde(default)]
    run_type: Vec<String>,
    run_id_pattern: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    logical_date_gte: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    logical_date_gt: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    logical_date_lte: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    logical_date_lt: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    start_date_gte: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    start_date_gt: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    start_date_lte: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    start_date_lt: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    end_date_gte: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    end_date_gt: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    end_date_lte: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    end_date_lt: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    run_after_gte: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    run_after_gt: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    run_after_lte: Option<String>,
    #[param(value_type = Option<DateTime<Utc>>)]
    run_after_lt: Option<String>,
}

const RUN_STATES: [&str; 4] = ["queued", "running", "success", "failed"];
const RUN_TYPES: [&str; 3] = ["scheduled", "manual", "backfill"];

fn range(
    prefix: &str,
    gte: &Option<String>,
    gt: &Option<String>,
    lte: &Option<String>,
    lt: &Option<String>,
) -> ApiResult<TimeRange> {
    Ok(TimeRange {
        gte: extract::time(&format!("{prefix}_gte"), gte)?,
        gt: extract::time(&format!("{prefix}_gt"), gt)?,
        lte: extract::time(&format!("{prefix}_lte"), lte)?,
        lt: extract::time(&format!("{prefix}_lt"), lt)?,
    })
}

fn one_of(name: &str, values: &[String], allowed: &[&str]) -> ApiResult<Vec<String>> {
    let values: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if let Some(bad) = values.iter().find(|v| !allowed.contains(&v.as_str())) {
        return Err(ApiError::invalid(
            &["query", name],
            format!(
                "{name}: Input should be one of {}, got {bad:?}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(values)
}

/// List the runs of a DAG (`~` for every DAG).
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/dagRuns",
    tag = "DagRun",
    params(("dag_id" = String, Path, description = "A DAG id, or `~` for all DAGs"), DagRunsQuery),
    responses(
        (status = 200, description = "Runs", body = DAGRunCollectionResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_dag_runs(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
    Query(q): Query<DagRunsQuery>,
) -> ApiResult<Json<DAGRunCollectionResponse>> {
    let (limit, offset) = extract::page(&q.limit, &q.offset)?;
    let dag_id = if dag_id == "~" {
        None
    } else {
        models::find_dag(&state.store, &dag_id).await?;
        Some(dag_id)
    };
    let filter = RunFilter {
        dag_id,
        states: one_of("state", &q.state, &RUN_STATES)?,
        run_types: one_of("run_type", &q.run_type, &RUN_TYPES)?,
        run_id_pattern: q.run_id_pattern.clone().filter(|p| p != "~"),
        logical_date: range("logical_date", &q.logical_date_gte, &q.logical_date_gt, &q.logical_date_lte, &q.logical_date_lt)?,
        start_date: range("start_date", &q.start_date_gte, &q.start_date_gt, &q.start_date_lte, &q.start_date_lt)?,
        end_date: range("end_date", &q.end_date_gte, &q.end_date_gt, &q.end_date_lte, &q.end_date_lt)?,
        run_after: range("run_after", &q.run_after_gte, &q.run_after_gt, &q.run_after_lte, &q.run_after_lt)?,
        order_by: extract::order_by(
            &q.order_by,
            sluice_store::run_order_column,
            "id, state, dag_id, run_id, dag_run_id, run_type, logical_date, run_after, data_interval_start, data_interval_end, start_date, end_date, queued_at",
        )?,
        limit,
        offset,
    };
    let (rows, total) = state.store.list_runs(&filter).await?;
    let mut runs = Vec::with_capacity(rows.len());
    for r in &rows {
        runs.push(run_response(&state, r).await?);
    }
    Ok(Json(DAGRunCollectionResponse {
        dag_runs: runs,
        total_entries: total,
    }))
}

/// Airflow's `TriggerDAGRunPostBody`.
#[derive(Deserialize, ToSchema)]
pub struct TriggerDAGRunPostBody {
    /// Default: `manual__<logical date>`.
    pub dag_run_id: Option<String>,
    /// Default (or null): now.
    pub logical_date: Option<DateTime<Utc>>,
    pub data_interval_start: Option<DateTime<Utc>>,
    pub data_interval_end: Option<DateTime<Utc>>,
    /// Sluice starts a run as soon as a slot is free; accepted and ignored.
    #[allow(dead_code)]
    pub run_after: Option<DateTime<Utc>>,
    /// A JSON object: templates read it as `dag_run.conf`.
    pub conf: Option<Value>,
    pub note: Option<String>,
}

/// Run ids become directory names of the run's logs: as in Airflow, only letters,
/// digits and `_.~:+-`, at most 250 characters.
fn check_run_id(id: &str) -> ApiResult<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_.~:+-".contains(c);
    if id.is_empty() || id.len() > 250 || !id.chars().all(ok_char) || id.chars().all(|c| c == '.') {
        return Err(ApiError::invalid(
            &["body", "dag_run_id"],
            format!("dag_run_id: use 1 to 250 letters, digits and _.~:+- characters, got {id:?}"),
        ));
    }
    Ok(())
}

/// Trigger a run.
#[utoipa::path(
    post,
    path = "/api/v2/dags/{dag_id}/dagRuns",
    tag = "DagRun",
    params(("dag_id" = String, Path)),
    request_body = TriggerDAGRunPostBody,
    responses(
        (status = 200, description = "The new run (queued)", body = DAGRunResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 409, description = "A run with this id or logical date exists", body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn trigger_dag_run(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path(dag_id): Path<String>,
    JsonBody(body): JsonBody<TriggerDAGRunPostBody>,
) -> ApiResult<Json<DAGRunResponse>> {
    let row = models::find_dag(&state.store, &dag_id).await?;
    if row.latest_version_id.is_none() {
        return Err(ApiError::not_found(format!(
            "Dag with id {dag_id} has no parsed version yet"
        )));
    }
    let conf = match body.conf {
        None | Some(Value::Null) => serde_json::json!({}),
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            return Err(ApiError::invalid(
                &["body", "conf"],
                format!("conf: Input should be a valid dictionary, got {other}"),
            ))
        }
    };
    if let Some(id) = &body.dag_run_id {
        check_run_id(id)?;
    }
    let logical = body
        .logical_date
        .map(|t| t.trunc_subsecs(6))
        .unwrap_or_else(now);
    let (start, end) = match (body.data_interval_start, body.data_interval_end) {
        (Some(s), Some(e)) if s <= e => (s, e),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                &["body", "data_interval_end"],
                "data_interval_end: must not be before data_interval_start",
            ))
        }
        (None, None) => (logical, logical),
        _ => {
            return Err(ApiError::invalid(
                &["body", "data_interval_start"],
                "data_interval_start and data_interval_end must be given together",
            ))
        }
    };
    let run_id = body
        .dag_run_id
        .clone()
        .unwrap_or_else(|| RunType::Manual.run_id(logical));
    if state.store.run(&dag_id, &run_id).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "DAG Run with dag_run_id: `{run_id}` already exists for Dag `{dag_id}`"
        )));
    }
    let new = NewRun {
        dag_id: dag_id.clone(),
        run_id: run_id.clone(),
        run_type: RunType::Manual,
        logical_date: logical,
        data_interval_start: start,
        data_interval_end: end,
        conf,
    };
    let run = state
        .store
        .create_run(&new, &format!("api:{}", user.username))
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "A DAG Run of `{dag_id}` with dag_run_id `{run_id}` or logical date {} already exists",
                logical.to_rfc3339()
            ))
        })?;
    if body.note.is_some() {
        state
            .store
            .set_run_note(run.id, body.note.as_deref())
            .await?;
    }
    state.wake();
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    Ok(Json(run_response(&state, &run).await?))
}

/// Get a run.
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}",
    tag = "DagRun",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path)),
    responses(
        (status = 200, description = "The run", body = DAGRunResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn get_dag_run(
    State(state): State<AppState>,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> ApiResult<Json<DAGRunResponse>> {
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    Ok(Json(run_response(&state, &run).await?))
}

/// Airflow's `DAGRunPatchBody`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DAGRunPatchBody {
    /// `success`, `failed` or `queued` (queued clears the run so it runs again).
    pub state: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub note: Option<Option<String>>,
}

/// Distinguishes a field set to null (Some(None)) from a missing one (None).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Mark a run success, failed or queued, or set its note.
#[utoipa::path(
    patch,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}",
    tag = "DagRun",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), UpdateMaskQuery),
    request_body = DAGRunPatchBody,
    responses(
        (status = 200, description = "The run, updated", body = DAGRunResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn patch_dag_run(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path((dag_id, run_id)): Path<(String, String)>,
    Query(mask): Query<UpdateMaskQuery>,
    JsonBody(body): JsonBody<DAGRunPatchBody>,
) -> ApiResult<Json<DAGRunResponse>> {
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    let mask: Vec<String> = mask
        .update_mask
        .iter()
        .flat_map(|m| m.split(','))
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if let Some(bad) = mask
        .iter()
        .find(|m| !["state", "note"].contains(&m.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid field `{bad}` in update mask"
        )));
    }
    let wants = |f: &str| mask.is_empty() || mask.iter().any(|m| m == f);
    if wants("state") {
        if let Some(s) = &body.state {
            let target = match s.as_str() {
                "success" => RunState::Success,
                "failed" => RunState::Failed,
                "queued" => RunState::Queued,
                other => {
                    return Err(ApiError::invalid(
                        &["body", "state"],
                        format!(
                            "state: Input should be 'queued', 'success' or 'failed', got {other:?}"
                        ),
                    ))
                }
            };
            let finished = state
                .store
                .set_run_state(run.id, target, &format!("api:{}", user.username))
                .await?;
            if finished {
                state.run_finished(&dag_id, target);
            }
            if target == RunState::Queued {
                state.wake();
            }
        }
    }
    if wants("note") {
        if let Some(note) = &body.note {
            state.store.set_run_note(run.id, note.as_deref()).await?;
        }
    }
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    Ok(Json(run_response(&state, &run).await?))
}

/// Delete a run with its task instances, tries and XComs.
#[utoipa::path(
    delete,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}",
    tag = "DagRun",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn delete_dag_run(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    state
        .store
        .delete_run(run.id, &format!("api:{}", user.username))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Airflow's `DAGRunClearBody`.
#[derive(Deserialize, ToSchema)]
pub struct DAGRunClearBody {
    /// Only list what would be cleared (default true, as in Airflow).
    #[serde(default = "yes")]
    pub dry_run: bool,
    /// Only failed and upstream_failed task instances.
    #[serde(default)]
    pub only_failed: bool,
    pub note: Option<String>,
}

fn yes() -> bool {
    true
}

/// Clear a run: its task instances run again (dry run by default).
#[utoipa::path(
    post,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/clear",
    tag = "DagRun",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path)),
    request_body = DAGRunClearBody,
    responses(
        (status = 200, description = "Dry run: the task instances that would be cleared (TaskInstanceCollectionResponse); else the run (DAGRunResponse)", body = TaskInstanceCollectionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn clear_dag_run(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path((dag_id, run_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<DAGRunClearBody>,
) -> ApiResult<Response> {
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    let sel = TiSelector {
        only_failed: body.only_failed,
        ..Default::default()
    };
    let tis = state
        .store
        .clear_task_instances(
            run.id,
            &sel,
            body.dry_run,
            &format!("api:{}", user.username),
        )
        .await?;
    if body.dry_run {
        let items = ti_responses(&state, &run, tis).await?;
        return Ok(Json(TaskInstanceCollectionResponse {
            total_entries: items.len() as i64,
            task_instances: items,
        })
        .into_response());
    }
    if body.note.is_some() {
        state
            .store
            .set_run_note(run.id, body.note.as_deref())
            .await?;
    }
    state.wake();
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    Ok(Json(run_response(&state, &run).await?).into_response())
}
