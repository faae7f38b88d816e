//! `/api/v2/dags`: list, get, details, pause/unpause.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::Dag;
use sluice_store::DagRow;
use utoipa::{IntoParams, ToSchema};

use crate::auth::User;
use crate::error::{ApiError, ApiResult, HTTPExceptionResponse, HTTPValidationError};
use crate::extract::{self, JsonBody, Query};
use crate::models::{self, DagVersionResponse};
use crate::AppState;

#[derive(Clone, Serialize, ToSchema)]
pub struct DagTagResponse {
    pub name: String,
    pub dag_id: String,
    pub dag_display_name: String,
}

/// A DAG, as Airflow's `DAGResponse`.
#[derive(Clone, Serialize, ToSchema)]
pub struct DAGResponse {
    pub dag_id: String,
    pub dag_display_name: String,
    pub is_paused: bool,
    /// The DAG's file no longer defines it (Sluice: the DAG is inactive).
    pub is_stale: bool,
    pub last_parsed_time: Option<DateTime<Utc>>,
    pub last_parse_duration: Option<f64>,
    pub last_expired: Option<DateTime<Utc>>,
    pub bundle_name: Option<String>,
    pub bundle_version: Option<String>,
    pub relative_fileloc: Option<String>,
    pub fileloc: String,
    pub description: Option<String>,
    pub timetable_summary: Option<String>,
    pub timetable_description: Option<String>,
    pub timetable_periodic: bool,
    pub timetable_partitioned: bool,
    pub tags: Vec<DagTagResponse>,
    pub max_active_tasks: i64,
    pub max_active_runs: Option<i64>,
    pub max_consecutive_failed_dag_runs: i64,
    pub has_task_concurrency_limits: bool,
    pub has_import_errors: bool,
    pub next_dagrun_logical_date: Option<DateTime<Utc>>,
    pub next_dagrun_data_interval_start: Option<DateTime<Utc>>,
    pub next_dagrun_data_interval_end: Option<DateTime<Utc>>,
    pub next_dagrun_run_after: Option<DateTime<Utc>>,
    pub allowed_run_types: Option<Vec<String>>,
    pub owners: Vec<String>,
    pub is_backfillable: bool,
    pub file_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct DAGCollectionResponse {
    pub dags: Vec<DAGResponse>,
    pub total_entries: i64,
}

/// A DAG with everything its definition says, as Airflow's `DAGDetailsResponse`.
#[derive(Serialize, ToSchema)]
pub struct DAGDetailsResponse {
    #[serde(flatten)]
    pub dag: DAGResponse,
    pub catchup: bool,
    pub dag_run_timeout: Option<String>,
    pub asset_expression: Option<Value>,
    pub doc_md: Option<String>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub is_paused_upon_creation: Option<bool>,
    pub params: Option<Value>,
    pub render_template_as_native_obj: bool,
    pub template_search_path: Option<Vec<String>>,
    pub timezone: Option<String>,
    pub last_parsed: Option<DateTime<Utc>>,
    pub default_args: Option<Value>,
    pub owner_links: Option<Value>,
    pub is_favorite: bool,
    pub active_runs_count: i64,
    /// Max active tasks per run (Airflow's older name).
    pub concurrency: i64,
    pub latest_dag_version: Option<DagVersionResponse>,
}

/// Airflow's `file_token`: an opaque token for the DAG's file.
fn file_token(fileloc: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(fileloc)
}

fn iso_duration(ms: u64) -> String {
    let secs = ms as f64 / 1000.0;
    format!("PT{secs}S")
}

/// The DAG's store row and current definition as an Airflow DAGResponse.
pub(crate) async fn dag_response(
    state: &AppState,
    row: &DagRow,
    import_errors: &HashSet<String>,
) -> ApiResult<(DAGResponse, Option<Arc<Dag>>)> {
    let dag = match row.latest_version_id {
        Some(id) => Some(state.store.dag_version(id).await?),
        None => None,
    };
    let mut next = None;
    if let Some(d) = &dag {
        if d.schedule.is_scheduled() {
            let last = state.store.last_scheduled_interval(&row.dag_id).await?;
            let now = sluice_store::now();
            if let Some(at) = d.next_due_at(last.as_ref(), now) {
                next = d.next_due_interval(last.as_ref(), at.max(now));
            }
        }
    }
    let tags = row
        .tag_list()
        .into_iter()
        .map(|name| DagTagResponse {
            name,
            dag_id: row.dag_id.clone(),
            dag_display_name: row.dag_id.clone(),
        })
        .collect();
    let periodic = dag.as_ref().is_some_and(|d| d.schedule.is_scheduled());
    let resp = DAGResponse {
        dag_id: row.dag_id.clone(),
        dag_display_name: row.dag_id.clone(),
        is_paused: row.is_paused,
        is_stale: !row.is_active,
        last_parsed_time: Some(row.updated_at),
        last_parse_duration: None,
        last_expired: None,
        bundle_name: None,
        bundle_version: None,
        relative_fileloc: std::path::Path::new(&row.fileloc)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned()),
        fileloc: row.fileloc.clone(),
        description: row.description.clone(),
        timetable_summary: Some(row.schedule.clone()),
        timetable_description: Some(row.schedule.clone()),
        timetable_periodic: periodic,
        timetable_partitioned: false,
        tags,
        max_active_tasks: dag
            .as_ref()
            .map(|d| i64::from(d.max_active_tasks))
            .unwrap_or(16),
        max_active_runs: Some(row.max_active_runs),
        max_consecutive_failed_dag_runs: 0,
        has_task_concurrency_limits: dag
            .as_ref()
            .is_some_and(|d| d.tasks.values().any(|t| t.map_concurrency.is_some())),
        has_import_errors: import_errors.contains(&row.fileloc),
        next_dagrun_logical_date: next.map(|iv| iv.start),
        next_dagrun_data_interval_start: next.map(|iv| iv.start),
        next_dagrun_data_interval_end: next.map(|iv| iv.end),
        next_dagrun_run_after: next.map(|iv| iv.end),
        allowed_run_types: None,
        owners: Vec::new(),
        is_backfillable: periodic,
        file_token: file_token(&row.fileloc),
    };
    Ok((resp, dag))
}

async fn import_error_files(state: &AppState) -> ApiResult<HashSet<String>> {
    Ok(state
        .store
        .import_errors()
        .await?
        .into_iter()
        .map(|e| e.fileloc)
        .collect())
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct DagsQuery {
    #[param(value_type = Option<i64>, minimum = 0)]
    limit: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
    /// DAGs with any of these tags (all of them with `tags_match_mode=all`).
    #[serde(default)]
    tags: Vec<String>,
    /// `any` (default) or `all`.
    tags_match_mode: Option<String>,
    /// Case-insensitive substring of the DAG id (`%`, `_` wildcards; `|` for alternatives).
    dag_id_pattern: Option<String>,
    dag_display_name_pattern: Option<String>,
    /// Leave out DAGs no longer defined by any file (default true).
    #[param(value_type = Option<bool>)]
    exclude_stale: Option<String>,
    #[param(value_type = Option<bool>)]
    paused: Option<String>,
    #[param(value_type = Option<bool>)]
    has_import_errors: Option<String>,
    /// `dag_id`, `dag_display_name`, `is_paused`, `next_dagrun`, `last_run_start_date`; `-` for descending.
    #[serde(default)]
    order_by: Vec<String>,
}

#[derive(Clone, Copy)]
enum DagOrder {
    Id,
    Paused,
    Next,
    LastStart,
}

/// List DAGs.
#[utoipa::path(
    get,
    path = "/api/v2/dags",
    tag = "DAG",
    params(DagsQuery),
    responses(
        (status = 200, description = "DAGs", body = DAGCollectionResponse),
        (status = 401, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_dags(
    State(state): State<AppState>,
    Query(q): Query<DagsQuery>,
) -> ApiResult<Json<DAGCollectionResponse>> {
    let (limit, offset) = extract::page(&q.limit, &q.offset)?;
    let exclude_stale = extract::boolean("exclude_stale", &q.exclude_stale)?.unwrap_or(true);
    let paused = extract::boolean("paused", &q.paused)?;
    let has_errors = extract::boolean("has_import_errors", &q.has_import_errors)?;
    let match_all = match q.tags_match_mode.as_deref() {
        None | Some("any") => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                &["query", "tags_match_mode"],
                format!("tags_match_mode: Input should be 'any' or 'all', got {other:?}"),
            ))
        }
    };
    let order = extract::order_by(
        &q.order_by,
        |f| match f {
            "dag_id" | "dag_display_name" => Some(DagOrder::Id),
            "is_paused" => Some(DagOrder::Paused),
            "next_dagrun" | "next_dagrun_logical_date" => Some(DagOrder::Next),
            "last_run_start_date" => Some(DagOrder::LastStart),
            _ => None,
        },
        "dag_id, dag_display_name, is_paused, next_dagrun, last_run_start_date",
    )?;
    let errors = import_error_files(&state).await?;
    let mut rows: Vec<DagRow> = state
        .store
        .dags()
        .await?
        .into_iter()
        .filter(|d| !exclude_stale || d.is_active)
        .filter(|d| paused.is_none_or(|p| d.is_paused == p))
        .filter(|d| has_errors.is_none_or(|h| errors.contains(&d.fileloc) == h))
        .filter(|d| extract::pattern_matches(&q.dag_id_pattern, &d.dag_id))
        .filter(|d| extract::pattern_matches(&q.dag_display_name_pattern, &d.dag_id))
        .filter(|d| {
            if q.tags.is_empty() {
                return true;
            }
            let tags = d.tag_list();
            if match_all {
                q.tags.iter().all(|t| tags.contains(t))
            } else {
                q.tags.iter().any(|t| tags.contains(t))
            }
        })
        .collect();
    let total = rows.len() as i64;
    let summaries = if order.iter().any(|(o, _)| matches!(o, DagOrder::LastStart)) {
        state.store.run_summaries().await?
    } else {
        Default::default()
    };
    // Ordering by next run needs every candidate's next run; other orders only the page's.
    let mut built: Vec<DAGResponse> = Vec::new();
    if order.iter().any(|(o, _)| matches!(o, DagOrder::Next)) {
        for row in &rows {
            built.push(dag_response(&state, row, &errors).await?.0);
        }
        sort_by(&mut built, &order, |d| {
            (
                d.dag_id.clone(),
                d.is_paused,
                d.next_dagrun_logical_date,
                summaries.get(&d.dag_id).and_then(|s| s.0),
            )
        });
        built = models::paginate(built, limit, offset);
    } else {
        let mut keyed: Vec<(DagRow, Option<DateTime<Utc>>)> = rows
            .drain(..)
            .map(|r| {
                let s = summaries.get(&r.dag_id).and_then(|s| s.0);
                (r, s)
            })
            .collect();
        sort_by(&mut keyed, &order, |(r, s)| {
            (r.dag_id.clone(), r.is_paused, None, *s)
        });
        for (row, _) in models::paginate(keyed, limit, offset) {
            built.push(dag_response(&state, &row, &errors).await?.0);
        }
    }
    Ok(Json(DAGCollectionResponse {
        dags: built,
        total_entries: total,
    }))
}

type SortKey = (String, bool, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn sort_by<T>(items: &mut [T], order: &[(DagOrder, bool)], key: impl Fn(&T) -> SortKey) {
    items.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        for (o, desc) in order {
            let c = match o {
                DagOrder::Id => ka.0.cmp(&kb.0),
                DagOrder::Paused => ka.1.cmp(&kb.1),
                DagOrder::Next => ka.2.cmp(&kb.2),
                DagOrder::LastStart => ka.3.cmp(&kb.3),
            };
            let c = if *desc { c.reverse() } else { c };
            if c != std::cmp::Ordering::Equal {
                return c;
            }
        }
        ka.0.cmp(&kb.0)
    });
}

/// Get a DAG.
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}",
    tag = "DAG",
    params(("dag_id" = String, Path)),
    responses(
        (status = 200, description = "The DAG", body = DAGResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn get_dag(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<DAGResponse>> {
    let row = models::find_dag(&state.store, &dag_id).await?;
    let errors = import_error_files(&state).await?;
    Ok(Json(dag_response(&state, &row, &errors).await?.0))
}

/// Get a DAG with its full definition.
#[utoipa::path(
    get,
    path = "/api/v2/dags/{dag_id}/details",
    tag = "DAG",
    params(("dag_id" = String, Path)),
    responses(
        (status = 200, description = "The DAG's details", body = DAGDetailsResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn get_dag_details(
    State(state): State<AppState>,
    Path(dag_id): Path<String>,
) -> ApiResult<Json<DAGDetailsResponse>> {
    let row = models::find_dag(&state.store, &dag_id).await?;
    let errors = import_error_files(&state).await?;
    let (resp, dag) = dag_response(&state, &row, &errors).await?;
    let active = state.store.active_run_count(&dag_id).await?;
    let version = match row.latest_version_id {
        Some(id) => models::dag_version(&state.store, &dag_id, id).await?,
        None => None,
    };
    let d = dag.as_deref();
    Ok(Json(DAGDetailsResponse {
        catchup: d.is_some_and(|d| d.catchup),
        dag_run_timeout: d.and_then(|d| d.dagrun_timeout_ms).map(iso_duration),
        asset_expression: None,
        doc_md: None,
        start_date: d.and_then(|d| d.start_date),
        end_date: d.and_then(|d| d.end_date),
        is_paused_upon_creation: d.and_then(|d| d.is_paused_upon_creation),
        params: d.map(|d| Value::Object(d.params.clone())),
        render_template_as_native_obj: false,
        template_search_path: None,
        timezone: Some(row.timezone.clone()),
        last_parsed: Some(row.updated_at),
        default_args: None,
        owner_links: None,
        is_favorite: false,
        active_runs_count: active,
        concurrency: resp.max_active_tasks,
        latest_dag_version: version,
        dag: resp,
    }))
}

/// Airflow's `DAGPatchBody`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DAGPatchBody {
    pub is_paused: bool,
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct UpdateMaskQuery {
    /// Fields of the body to apply (default: all).
    #[serde(default)]
    pub update_mask: Vec<String>,
}

/// Pause or unpause a DAG.
#[utoipa::path(
    patch,
    path = "/api/v2/dags/{dag_id}",
    tag = "DAG",
    params(("dag_id" = String, Path), UpdateMaskQuery),
    request_body = DAGPatchBody,
    responses(
        (status = 200, description = "The DAG, updated", body = DAGResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn patch_dag(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path(dag_id): Path<String>,
    Query(mask): Query<UpdateMaskQuery>,
    JsonBody(body): JsonBody<DAGPatchBody>,
) -> ApiResult<Json<DAGResponse>> {
    let mask: Vec<&str> = mask
        .update_mask
        .iter()
        .flat_map(|m| m.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    if let Some(bad) = mask.iter().find(|m| **m != "is_paused") {
        return Err(ApiError::bad_request(format!(
            "Only `is_paused` field can be updated through the REST API, not {bad}"
        )));
    }
    models::find_dag(&state.store, &dag_id).await?;
    state
        .store
        .set_paused(&dag_id, body.is_paused, &format!("api:{}", user.username))
        .await?;
    if !body.is_paused {
        state.wake();
    }
    get_dag(State(state), Path(dag_id)).await
}
