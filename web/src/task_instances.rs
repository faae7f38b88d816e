//! Task instances of a run: list, get (also by map index), tries, set state, clear,
//! and their logs.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_core::Dag;
use sluice_store::{RunFilter, RunRow, TiFilter, TiRow, TiSelector, TiState, TimeRange, TryRow};
use utoipa::{IntoParams, ToSchema};

use crate::auth::User;
use crate::dags::UpdateMaskQuery;
use crate::error::{ApiError, ApiResult, HTTPExceptionResponse, HTTPValidationError};
use crate::extract::{self, JsonBody, Query};
use crate::models::{self, uuid_of, DagVersionResponse, UUID_TI};
use crate::AppState;

/// A task instance, as Airflow's `TaskInstanceResponse`.
#[derive(Serialize, ToSchema)]
pub struct TaskInstanceResponse {
    /// UUID form of the task instance's id.
    pub id: String,
    pub task_id: String,
    pub dag_id: String,
    pub dag_run_id: String,
    pub map_index: i64,
    pub logical_date: Option<DateTime<Utc>>,
    pub run_after: DateTime<Utc>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    /// Seconds.
    pub duration: Option<f64>,
    /// null while undecided (Airflow's "none").
    pub state: Option<String>,
    pub try_number: i64,
    /// Retries allowed (Airflow counts retries, not tries).
    pub max_tries: i64,
    pub task_display_name: String,
    pub dag_display_name: String,
    pub hostname: Option<String>,
    pub unixname: Option<String>,
    pub pool: String,
    pub pool_slots: i64,
    pub queue: Option<String>,
    pub priority_weight: Option<i64>,
    /// The task's kind (`shell`, `http`, …).
    pub operator: Option<String>,
    pub operator_name: Option<String>,
    pub queued_when: Option<DateTime<Utc>>,
    pub scheduled_when: Option<DateTime<Utc>>,
    pub pid: Option<i64>,
    pub executor: Option<String>,
    pub executor_config: String,
    pub note: Option<String>,
    /// A mapped instance's item (JSON).
    pub rendered_map_index: Option<String>,
    pub rendered_fields: Value,
    pub trigger: Option<Value>,
    pub triggerer_job: Option<Value>,
    pub dag_version: Option<DagVersionResponse>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskInstanceCollectionResponse {
    pub task_instances: Vec<TaskInstanceResponse>,
    pub total_entries: i64,
}

/// One try of a task instance, as Airflow's `TaskInstanceHistoryResponse`.
#[derive(Serialize, ToSchema)]
pub struct TaskInstanceHistoryResponse {
    pub task_id: String,
    pub dag_id: String,
    pub dag_run_id: String,
    pub map_index: i64,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub duration: Option<f64>,
    pub state: Option<String>,
    pub try_number: i64,
    pub max_tries: i64,
    pub task_display_name: String,
    pub dag_display_name: String,
    pub hostname: Option<String>,
    pub unixname: Option<String>,
    pub pool: String,
    pub pool_slots: i64,
    pub queue: Option<String>,
    pub priority_weight: Option<i64>,
    pub operator: Option<String>,
    pub operator_name: Option<String>,
    pub queued_when: Option<DateTime<Utc>>,
    pub scheduled_when: Option<DateTime<Utc>>,
    pub pid: Option<i64>,
    pub executor: Option<String>,
    pub executor_config: String,
    pub dag_version: Option<DagVersionResponse>,
    /// Sluice: the try's error, if it failed.
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskInstanceHistoryCollectionResponse {
    pub task_instances: Vec<TaskInstanceHistoryResponse>,
    pub total_entries: i64,
}

fn ti_response(
    run: &RunRow,
    dag: Option<&Dag>,
    version: Option<&DagVersionResponse>,
    ti: TiRow,
) -> TaskInstanceResponse {
    let kind = dag
        .and_then(|d| d.task(&ti.task_id))
        .map(|t| t.kind.clone());
    TaskInstanceResponse {
        id: uuid_of(UUID_TI, ti.id),
        dag_id: ti.dag_id.clone(),
        dag_run_id: ti.run_id.clone(),
        map_index: ti.map_index,
        logical_date: Some(run.logical_date),
        run_after: run.data_interval_end,
        start_date: ti.start_date,
        end_date: ti.end_date,
        duration: ti.duration_ms.map(|ms| ms as f64 / 1000.0),
        state: ti.state.clone(),
        try_number: ti.try_number,
        max_tries: (ti.max_tries - 1).max(0),
        task_display_name: ti.task_id.clone(),
        dag_display_name: ti.dag_id.clone(),
        hostname: ti.hostname.clone(),
        unixname: None,
        pool: ti.pool.clone(),
        pool_slots: ti.pool_slots,
        queue: Some("default".into()),
        priority_weight: Some(ti.priority_weight),
        operator_name: kind.clone(),
        operator: kind,
        queued_when: None,
        scheduled_when: ti.scheduled_at,
        pid: None,
        executor: None,
        executor_config: "{}".into(),
        note: None,
        rendered_map_index: None,
        rendered_fields: json!({}),
        trigger: None,
        triggerer_job: None,
        dag_version: version.cloned(),
        task_id: ti.task_id,
    }
}

/// Responses for task instances of one run.
pub(crate) async fn ti_responses(
    state: &AppState,
    run: &RunRow,
    tis: Vec<TiRow>,
) -> ApiResult<Vec<TaskInstanceResponse>> {
    let dag = state.store.dag_version(run.dag_version_id).await.ok();
    let version = models::dag_version(&state.store, &run.dag_id, run.dag_version_id).await?;
    Ok(tis
        .into_iter()
        .map(|ti| ti_response(run, dag.as_deref(), version.as_ref(), ti))
        .collect())
}

/// One task instance, with the rendered arguments of its latest try (lists leave them
/// out, as Airflow's do: they cost a read per task instance).
async fn single_ti_response(
    state: &AppState,
    run: &RunRow,
    ti: TiRow,
) -> ApiResult<Json<TaskInstanceResponse>> {
    let rendered = state
        .store
        .try_rendered_fields(ti.id, ti.try_number)
        .await?
        .and_then(|s| serde_json::from_str::<Value>(&s).ok());
    let mut resp = ti_responses(state, run, vec![ti]).await?.remove(0);
    if let Some(r) = rendered {
        resp.rendered_fields = r;
    }
    Ok(Json(resp))
}

/// Task instances of runs of different DAGs.
async fn ti_responses_any(
    state: &AppState,
    tis: Vec<TiRow>,
) -> ApiResult<Vec<TaskInstanceResponse>> {
    let mut runs: HashMap<i64, RunRow> = HashMap::new();
    let mut out = Vec::with_capacity(tis.len());
    for ti in tis {
        if let std::collections::hash_map::Entry::Vacant(slot) = runs.entry(ti.dag_run_id) {
            if let Some(r) = state.store.run_by_pk(ti.dag_run_id).await? {
                slot.insert(r);
            }
        }
        if let Some(run) = runs.get(&ti.dag_run_id) {
            out.extend(ti_responses(state, run, vec![ti]).await?);
        }
    }
    Ok(out)
}

const TI_STATES: [&str; 10] = [
    "none",
    "scheduled",
    "queued",
    "running",
    "success",
    "failed",
    "up_for_retry",
    "upstream_failed",
    "skipped",
    "removed",
];

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct TaskInstancesQuery {
    #[param(value_type = Option<i64>, minimum = 0)]
    limit: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
    /// States (`none` for undecided).
    #[serde(default)]
    state: Vec<String>,
    task_id: Option<String>,
    #[serde(default)]
    pool: Vec<String>,
    #[param(value_type = Option<i64>)]
    map_index: Option<String>,
    /// `id`, `dag_id`, `run_id`, `task_id`, `map_index`, `state`, `start_date`, `end_date`, `duration`, `priority_weight`, `try_number`, `logical_date`, `pool`; `-` for descending.
    #[serde(default)]
    order_by: Vec<String>,
}

/// List the task instances of a run (`~` as dag_id and/or dag_run_id: of every DAG or run).
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances",
    tag = "Task Instance",
    params(
        ("dag_id" = String, Path, description = "A DAG id, or `~` for all DAGs"),
        ("dag_run_id" = String, Path, description = "A run id, or `~` for all runs"),
        TaskInstancesQuery
    ),
    responses(
        (status = 200, description = "Task instances", body = TaskInstanceCollectionResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_task_instances(
    State(state): State<AppState>,
    Path((dag_id, run_id)): Path<(String, String)>,
    Query(q): Query<TaskInstancesQuery>,
) -> ApiResult<Json<TaskInstanceCollectionResponse>> {
    let (limit, offset) = extract::page(&q.limit, &q.offset)?;
    let map_index = extract::int("map_index", &q.map_index, -1)?;
    let states: Vec<String> = q
        .state
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = states.iter().find(|s| !TI_STATES.contains(&s.as_str())) {
        return Err(ApiError::invalid(
            &["query", "state"],
            format!(
                "state: Input should be one of {}, got {bad:?}",
                TI_STATES.join(", ")
            ),
        ));
    }
    let order = extract::order_by(
        &q.order_by,
        sluice_store::ti_order_column,
        "id, dag_id, run_id, task_id, map_index, state, start_date, end_date, duration, priority_weight, try_number, logical_date, pool",
    )?;
    let dag_id = (dag_id != "~").then_some(dag_id);
    let run_id = (run_id != "~").then_some(run_id);
    match (&dag_id, &run_id) {
        (Some(d), Some(r)) => {
            models::find_run(&state.store, d, r).await?;
        }
        (Some(d), None) => {
            models::find_dag(&state.store, d).await?;
        }
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "a dag_run_id needs its dag_id: use ~ for both to list every task instance",
            ))
        }
        (None, None) => {}
    }
    let filter = TiFilter {
        dag_id,
        run_id,
        states,
        task_id: q.task_id.clone(),
        pools: q.pool.clone(),
        map_index,
        order_by: order,
        limit,
        offset,
    };
    let (tis, total) = state.store.list_task_instances(&filter).await?;
    let items = ti_responses_any(&state, tis).await?;
    Ok(Json(TaskInstanceCollectionResponse {
        task_instances: items,
        total_entries: total,
    }))
}

/// The task instance, or a 404 naming it. `map_index` None: the unmapped one.
pub(crate) async fn find_ti(
    state: &AppState,
    run: &RunRow,
    task_id: &str,
    map_index: Option<i64>,
) -> ApiResult<TiRow> {
    let tis = state.store.task_instances(run.id).await?;
    let want = map_index.unwrap_or(-1);
    if let Some(ti) = tis
        .iter()
        .find(|t| t.task_id == task_id && t.map_index == want)
    {
        return Ok(ti.clone());
    }
    if map_index.is_none() && tis.iter().any(|t| t.task_id == task_id) {
        return Err(ApiError::not_found(format!(
            "Task instance {task_id} of run {} is mapped: add the map index to the URL",
            run.run_id
        )));
    }
    Err(ApiError::not_found(format!(
        "The Task Instance with dag_id: `{}`, run_id: `{}`, task_id: `{task_id}` and map_index: `{want}` was not found",
        run.dag_id, run.run_id
    )))
}

/// Get a task instance.
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
    tag = "Task Instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path)),
    responses(
        (status = 200, description = "The task instance", body = TaskInstanceResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn get_task_instance(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
) -> ApiResult<Json<TaskInstanceResponse>> {
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    let ti = find_ti(&state, &run, &task_id, None).await?;
    single_ti_response(&state, &run, ti).await
}

/// Get a mapped task instance.
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}",
    tag = "Task Instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("map_index" = i64, Path)),
    responses(
        (status = 200, description = "The task instance", body = TaskInstanceResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_mapped_task_instance(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id, map_index)): Path<(String, String, String, String)>,
) -> ApiResult<Json<TaskInstanceResponse>> {
    let map_index = path_int("map_index", &map_index)?;
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    let ti = find_ti(&state, &run, &task_id, Some(map_index)).await?;
    single_ti_response(&state, &run, ti).await
}

fn path_int(name: &str, v: &str) -> ApiResult<i64> {
    v.parse().map_err(|_| {
        ApiError::invalid(
            &["path", name],
            format!("{name}: Input should be a valid integer, got {v:?}"),
        )
    })
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct MapIndexQuery {
    /// Default -1 (not mapped).
    #[param(value_type = Option<i64>)]
    map_index: Option<String>,
}

fn try_response(
    run: &RunRow,
    ti: &TiRow,
    dag: Option<&Dag>,
    version: Option<&DagVersionResponse>,
    t: TryRow,
) -> TaskInstanceHistoryResponse {
    let kind = dag
        .and_then(|d| d.task(&ti.task_id))
        .map(|t| t.kind.clone());
    TaskInstanceHistoryResponse {
        task_id: ti.task_id.clone(),
        dag_id: ti.dag_id.clone(),
        dag_run_id: run.run_id.clone(),
        map_index: ti.map_index,
        start_date: Some(t.start_date),
        end_date: t.end_date,
        duration: t.duration_ms.map(|ms| ms as f64 / 1000.0),
        state: Some(t.state),
        try_number: t.try_number,
        max_tries: (ti.max_tries - 1).max(0),
        task_display_name: ti.task_id.clone(),
        dag_display_name: ti.dag_id.clone(),
        hostname: Some(t.hostname),
        unixname: None,
        pool: ti.pool.clone(),
        pool_slots: ti.pool_slots,
        queue: Some("default".into()),
        priority_weight: Some(ti.priority_weight),
        operator_name: kind.clone(),
        operator: kind,
        queued_when: None,
        scheduled_when: ti.scheduled_at,
        pid: None,
        executor: None,
        executor_config: "{}".into(),
        dag_version: version.cloned(),
        error: t.error,
    }
}

/// Every try of a task instance (the current one included).
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/tries",
    tag = "Task Instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), MapIndexQuery),
    responses(
        (status = 200, description = "Tries, oldest first", body = TaskInstanceHistoryCollectionResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn get_task_instance_tries(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(q): Query<MapIndexQuery>,
) -> ApiResult<Json<TaskInstanceHistoryCollectionResponse>> {
    let map_index = extract::int("map_index", &q.map_index, -1)?;
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    let ti = find_ti(&state, &run, &task_id, map_index).await?;
    let dag = state.store.dag_version(run.dag_version_id).await.ok();
    let version = models::dag_version(&state.store, &dag_id, run.dag_version_id).await?;
    let tries: Vec<TaskInstanceHistoryResponse> = state
        .store
        .tries(ti.id)
        .await?
        .into_iter()
        .map(|t| try_response(&run, &ti, dag.as_deref(), version.as_ref(), t))
        .collect();
    Ok(Json(TaskInstanceHistoryCollectionResponse {
        total_entries: tries.len() as i64,
        task_instances: tries,
    }))
}

/// One try of a task instance.
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/tries/{task_try_number}",
    tag = "Task Instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("task_try_number" = i64, Path), MapIndexQuery),
    responses(
        (status = 200, description = "The try", body = TaskInstanceHistoryResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn get_task_instance_try_details(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id, try_number)): Path<(String, String, String, String)>,
    Query(q): Query<MapIndexQuery>,
) -> ApiResult<Json<TaskInstanceHistoryResponse>> {
    let try_number = path_int("task_try_number", &try_number)?;
    let map_index = extract::int("map_index", &q.map_index, -1)?;
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    let ti = find_ti(&state, &run, &task_id, map_index).await?;
    let dag = state.store.dag_version(run.dag_version_id).await.ok();
    let version = models::dag_version(&state.store, &dag_id, run.dag_version_id).await?;
    let t = state
        .store
        .tries(ti.id)
        .await?
        .into_iter()
        .find(|t| t.try_number == try_number)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Task instance {task_id} of run {run_id} has no try {try_number}"
            ))
        })?;
    Ok(Json(try_response(
        &run,
        &ti,
        dag.as_deref(),
        version.as_ref(),
        t,
    )))
}

/// Airflow's `PatchTaskInstanceBody`.
#[derive(Deserialize, ToSchema)]
pub struct PatchTaskInstanceBody {
    /// `success`, `failed` or `skipped`.
    pub new_state: Option<String>,
    pub note: Option<String>,
    #[serde(default)]
    pub include_upstream: bool,
    #[serde(default)]
    pub include_downstream: bool,
    #[serde(default)]
    pub include_future: bool,
    #[serde(default)]
    pub include_past: bool,
    /// Sluice extension: only list what would change (same as the `/dry_run` path).
    #[serde(default)]
    pub dry_run: bool,
}

fn parse_new_state(s: &str) -> ApiResult<TiState> {
    match s {
        "success" => Ok(TiState::Success),
        "failed" => Ok(TiState::Failed),
        "skipped" => Ok(TiState::Skipped),
        other => Err(ApiError::invalid(
            &["body", "new_state"],
            format!("new_state: Input should be 'success', 'failed' or 'skipped', got {other:?}"),
        )),
    }
}

/// The task instance a PATCH names.
struct TiPath {
    dag_id: String,
    run_id: String,
    task_id: String,
    /// None: the unmapped task instance.
    map_index: Option<i64>,
}

async fn patch_ti(
    state: AppState,
    user: User,
    target: TiPath,
    mask: UpdateMaskQuery,
    body: PatchTaskInstanceBody,
    dry_run: bool,
) -> ApiResult<Json<TaskInstanceCollectionResponse>> {
    let TiPath {
        dag_id,
        run_id,
        task_id,
        map_index,
    } = target;
    if body.include_future || body.include_past {
        return Err(ApiError::bad_request(
            "include_future and include_past are not supported by Sluice",
        ));
    }
    let mask: Vec<String> = mask
        .update_mask
        .iter()
        .flat_map(|m| m.split(','))
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if let Some(bad) = mask
        .iter()
        .find(|m| !["new_state", "note"].contains(&m.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid field `{bad}` in update mask"
        )));
    }
    if mask.iter().any(|m| m == "note")
        || (mask.is_empty() && body.note.is_some() && body.new_state.is_none())
    {
        return Err(ApiError::bad_request(
            "Sluice does not keep notes on task instances; set a note on the DAG run",
        ));
    }
    let new_state = match &body.new_state {
        Some(s) => parse_new_state(s)?,
        None => {
            return Err(ApiError::invalid(
                &["body", "new_state"],
                "Field required: new_state",
            ))
        }
    };
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    let ti = find_ti(&state, &run, &task_id, map_index).await?;
    let sel = TiSelector {
        tasks: Some(vec![(task_id.clone(), map_index.map(|_| ti.map_index))]),
        include_upstream: body.include_upstream,
        include_downstream: body.include_downstream,
        ..Default::default()
    };
    let (changed, run_finished) = state
        .store
        .set_task_instance_state(
            run.id,
            &sel,
            new_state,
            dry_run || body.dry_run,
            &format!("api:{}", user.username),
        )
        .await?;
    if !dry_run {
        state.wake();
    }
    if let Some(run_state) = run_finished {
        state.run_finished(&dag_id, run_state);
    }
    let items = ti_responses(&state, &run, changed).await?;
    Ok(Json(TaskInstanceCollectionResponse {
        total_entries: items.len() as i64,
        task_instances: items,
    }))
}

/// Set a task instance's state (success, failed, skipped); its downstream is decided
/// again and the run finishes or goes on accordingly.
#[utoipa::path(
    patch,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
    tag = "Task Instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), UpdateMaskQuery),
    request_body = PatchTaskInstanceBody,
    responses(
        (status = 200, description = "The task instances that changed", body = TaskInstanceCollectionResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn patch_task_instance(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(mask): Query<UpdateMaskQuery>,
    JsonBody(body): JsonBody<PatchTaskInstanceBody>,
) -> ApiResult<Json<TaskInstanceCollectionResponse>> {
    let target = TiPath {
        dag_id,
        run_id,
        task_id,
        map_index: None,
    };
    patch_ti(state, user, target, mask, body, false).await
}

/// Set a mapped task instance's state.
#[utoipa::path(
    patch,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}",
    tag = "Task Instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("map_index" = i64, Path), UpdateMaskQuery),
    request_body = PatchTaskInstanceBody,
    responses(
        (status = 200, description = "The task instances that changed", body = TaskInstanceCollectionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn patch_task_instance_by_map_index(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path((dag_id, run_id, task_id, map_index)): Path<(String, String, String, String)>,
    Query(mask): Query<UpdateMaskQuery>,
    JsonBody(body): JsonBody<PatchTaskInstanceBody>,
) -> ApiResult<Json<TaskInstanceCollectionResponse>> {
    let map_index = path_int("map_index", &map_index)?;
    let target = TiPath {
        dag_id,
        run_id,
        task_id,
        map_index: Some(map_index),
    };
    patch_ti(state, user, target, mask, body, false).await
}

/// What setting a task instance's state would change, without changing it.
#[utoipa::path(
    patch,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/dry_run",
    tag = "Task Instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), UpdateMaskQuery),
    request_body = PatchTaskInstanceBody,
    responses(
        (status = 200, description = "The task instances that would change", body = TaskInstanceCollectionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn patch_task_instance_dry_run(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(mask): Query<UpdateMaskQuery>,
    JsonBody(body): JsonBody<PatchTaskInstanceBody>,
) -> ApiResult<Json<TaskInstanceCollectionResponse>> {
    let target = TiPath {
        dag_id,
        run_id,
        task_id,
        map_index: None,
    };
    patch_ti(state, user, target, mask, body, true).await
}

/// Airflow's `ClearTaskInstancesBody`.
#[derive(Deserialize, ToSchema)]
pub struct ClearTaskInstancesBody {
    /// Only list what would be cleared (default true, as in Airflow).
    #[serde(default = "yes")]
    pub dry_run: bool,
    /// Only failed and upstream_failed task instances (default true, as in Airflow).
    #[serde(default = "yes")]
    pub only_failed: bool,
    #[serde(default)]
    pub only_running: bool,
    /// Task ids, or `[task_id, map_index]` pairs; default every task.
    #[schema(value_type = Option<Vec<Value>>)]
    pub task_ids: Option<Vec<Value>>,
    /// One run; else the runs whose logical date is within start_date..end_date.
    pub dag_run_id: Option<String>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub include_upstream: bool,
    #[serde(default)]
    pub include_downstream: bool,
    #[serde(default)]
    pub include_future: bool,
    #[serde(default)]
    pub include_past: bool,
    /// Runs are always re-queued (Airflow's default); accepted for compatibility.
    #[allow(dead_code)]
    pub reset_dag_runs: Option<bool>,
    pub note: Option<String>,
}

fn yes() -> bool {
    true
}

/// Task ids, each with an optional map index.
type TaskList = Vec<(String, Option<i64>)>;

fn parse_task_ids(v: &Option<Vec<Value>>) -> ApiResult<Option<TaskList>> {
    let Some(list) = v else { return Ok(None) };
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let bad = || {
            ApiError::invalid(
                &["body", "task_ids", &i.to_string()],
                format!(
                    "task_ids.{i}: expected a task id or a [task_id, map_index] pair, got {item}"
                ),
            )
        };
        match item {
            Value::String(s) => out.push((s.clone(), None)),
            Value::Array(pair) if pair.len() == 2 => {
                let (Some(t), Some(m)) = (pair[0].as_str(), pair[1].as_i64()) else {
                    return Err(bad());
                };
                out.push((t.to_string(), Some(m)));
            }
            _ => return Err(bad()),
        }
    }
    Ok(Some(out))
}

/// Clear task instances of one run or of the runs in a date range, so they run again
/// (dry run and only failed ones by default, as in Airflow).
#[utoipa::path(
    post,
    path = "/api/v2/dags/{dag_id}/clearTaskInstances",
    tag = "Task Instance",
    params(("dag_id" = String, Path)),
    request_body = ClearTaskInstancesBody,
    responses(
        (status = 200, description = "The task instances cleared (or that would be)", body = TaskInstanceCollectionResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn post_clear_task_instances(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path(dag_id): Path<String>,
    JsonBody(body): JsonBody<ClearTaskInstancesBody>,
) -> ApiResult<Json<TaskInstanceCollectionResponse>> {
    if body.include_future || body.include_past {
        return Err(ApiError::bad_request(
            "include_future and include_past are not supported by Sluice",
        ));
    }
    models::find_dag(&state.store, &dag_id).await?;
    let sel = TiSelector {
        tasks: parse_task_ids(&body.task_ids)?,
        only_failed: body.only_failed,
        only_running: body.only_running,
        include_upstream: body.include_upstream,
        include_downstream: body.include_downstream,
    };
    let runs: Vec<RunRow> = match &body.dag_run_id {
        Some(run_id) => vec![models::find_run(&state.store, &dag_id, run_id).await?],
        None => {
            let filter = RunFilter {
                dag_id: Some(dag_id.clone()),
                logical_date: TimeRange {
                    gte: body.start_date,
                    lte: body.end_date,
                    ..Default::default()
                },
                limit: 100_000,
                ..Default::default()
            };
            state.store.list_runs(&filter).await?.0
        }
    };
    let actor = format!("api:{}", user.username);
    let mut cleared = Vec::new();
    for run in &runs {
        let tis = state
            .store
            .clear_task_instances(run.id, &sel, body.dry_run, &actor)
            .await?;
        if !body.dry_run && body.note.is_some() && !tis.is_empty() {
            state
                .store
                .set_run_note(run.id, body.note.as_deref())
                .await?;
        }
        cleared.extend(tis);
    }
    if !body.dry_run {
        state.wake();
    }
    let items = ti_responses_any(&state, cleared).await?;
    Ok(Json(TaskInstanceCollectionResponse {
        total_entries: items.len() as i64,
        task_instances: items,
    }))
}

// ---- logs ----

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Whole log, ignoring `token`.
    #[param(value_type = Option<bool>)]
    full_content: Option<String>,
    #[param(value_type = Option<i64>)]
    map_index: Option<String>,
    /// `continuation_token` of a previous answer: only what was written since.
    token: Option<String>,
}

/// Airflow's `TaskInstancesLogResponse`: `content` is a list of structured lines.
#[derive(Serialize, ToSchema)]
pub struct TaskInstancesLogResponse {
    #[schema(value_type = Vec<Object>)]
    pub content: Vec<Value>,
    pub continuation_token: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct LogToken {
    /// Byte offset already read.
    log_pos: u64,
    end_of_log: bool,
}

/// `[2024-08-01T00:00:00.000Z] INFO  sluice: message` → a structured log line.
fn structured(line: &str) -> Value {
    if let Some(rest) = line.strip_prefix('[') {
        if let Some((ts, rest)) = rest.split_once("] ") {
            if let Some(t) = extract::parse_time(ts) {
                let mut parts = rest.trim_start().splitn(2, ' ');
                let level = parts.next().unwrap_or("").to_ascii_lowercase();
                let rest = parts.next().unwrap_or("").trim_start();
                let (logger, event) = rest.split_once(": ").unwrap_or(("", rest));
                return json!({
                    "timestamp": t,
                    "level": level,
                    "logger": logger,
                    "event": event,
                });
            }
        }
    }
    json!({ "event": line })
}

/// A try's log: JSON (`content` lines and a `continuation_token`) by default; plain
/// text when the Accept header asks for text; one JSON line per log line for
/// `application/x-ndjson`.
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
    tag = "Task Instance",
    params(("dag_id" = String, Path), ("dag_run_id" = String, Path), ("task_id" = String, Path), ("try_number" = i64, Path), LogQuery),
    responses(
        (status = 200, description = "The log", body = TaskInstancesLogResponse, content_type = "application/json"),
        (status = 200, description = "The log as text", body = String, content_type = "text/plain"),
        (status = 400, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_log(
    State(state): State<AppState>,
    Path((dag_id, run_id, task_id, try_number)): Path<(String, String, String, String)>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let try_number = path_int("try_number", &try_number)?;
    let map_index = extract::int("map_index", &q.map_index, -1)?;
    let full = extract::boolean("full_content", &q.full_content)?.unwrap_or(false);
    let run = models::find_run(&state.store, &dag_id, &run_id).await?;
    let ti = find_ti(&state, &run, &task_id, map_index).await?;
    let try_row = state
        .store
        .tries(ti.id)
        .await?
        .into_iter()
        .find(|t| t.try_number == try_number);
    let Some(try_row) = try_row else {
        return Err(ApiError::not_found(format!(
            "Task instance {task_id} of run {run_id} has no try {try_number} (it has had {})",
            ti.try_number
        )));
    };
    let start = match (&q.token, full) {
        (Some(tok), false) => {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(tok.trim())
                .ok()
                .and_then(|b| serde_json::from_slice::<LogToken>(&b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "Bad Signature. Please use only the tokens provided by the API.",
                    )
                })?;
            decoded.log_pos
        }
        _ => 0,
    };
    let path = state.cfg.logs_dir.join(&try_row.log_path);
    let (text, end) = match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let from = (start as usize).min(bytes.len());
            // Only whole lines: a line still being written is returned next time.
            let upto = if try_row.end_date.is_some() {
                bytes.len()
            } else {
                bytes[from..]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(from, |i| from + i + 1)
            };
            (
                String::from_utf8_lossy(&bytes[from..upto]).into_owned(),
                upto as u64,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), start),
        Err(e) => {
            return Err(ApiError::internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let finished = try_row.end_date.is_some();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&LogToken {
            log_pos: end,
            end_of_log: finished,
        })
        .unwrap_or_default(),
    );
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/plain") || (accept.starts_with("text/") && !accept.contains("json")) {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    let mut lines: Vec<Value> = text.lines().map(structured).collect();
    if lines.is_empty() && start == 0 {
        lines.push(json!({ "event": format!("No log yet for try {try_number} of {task_id} (expected at {})", try_row.log_path) }));
    }
    if accept.contains("application/x-ndjson") {
        let mut body = String::new();
        for l in &lines {
            body.push_str(&l.to_string());
            body.push('\n');
        }
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response());
    }
    Ok(Json(TaskInstancesLogResponse {
        content: lines,
        continuation_token: Some(token),
    })
    .into_response())
}
