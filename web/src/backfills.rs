//! `POST /api/v2/backfills`: queue runs for every schedule interval between two dates,
//! as `sluice dags backfill` does; a running scheduler executes them, at most
//! `max_active_runs` of the DAG at a time.

use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_store::{now, NewRun, RunType};
use utoipa::ToSchema;

use crate::auth::User;
use crate::error::{ApiError, ApiResult, HTTPExceptionResponse, HTTPValidationError};
use crate::extract::JsonBody;
use crate::models;
use crate::AppState;

/// Airflow's `BackfillPostBody`.
#[derive(Deserialize, ToSchema)]
pub struct BackfillPostBody {
    pub dag_id: String,
    /// First logical date (inclusive).
    pub from_date: DateTime<Utc>,
    /// Last logical date (inclusive).
    pub to_date: DateTime<Utc>,
    #[serde(default)]
    pub run_backwards: bool,
    pub dag_run_conf: Option<Value>,
    /// `none` (default): intervals that already have a run are left alone. Sluice
    /// never re-runs existing runs through a backfill (clear them instead).
    pub reprocess_behavior: Option<String>,
    /// The DAG's own max_active_runs applies; accepted for compatibility.
    #[allow(dead_code)]
    pub max_active_runs: Option<i64>,
}

/// Airflow's `BackfillResponse`. Sluice keeps no backfill object: `id` is the
/// database id of the first run it queued (0 when every interval had a run).
#[derive(Serialize, ToSchema)]
pub struct BackfillResponse {
    pub id: i64,
    pub dag_id: String,
    pub from_date: DateTime<Utc>,
    pub to_date: DateTime<Utc>,
    pub dag_run_conf: Value,
    pub is_paused: bool,
    pub reprocess_behavior: String,
    pub max_active_runs: i64,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub dag_display_name: String,
    /// Sluice: the run ids queued by this request.
    pub queued_run_ids: Vec<String>,
    /// Sluice: how many intervals already had a run.
    pub existing_runs: i64,
}

/// Queue a backfill.
#[utoipa::path(
    post,
    path = "/api/v2/backfills",
    tag = "Backfill",
    request_body = BackfillPostBody,
    responses(
        (status = 200, description = "Runs queued", body = BackfillResponse),
        (status = 400, body = HTTPExceptionResponse),
        (status = 403, body = HTTPExceptionResponse),
        (status = 404, body = HTTPExceptionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn create_backfill(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    JsonBody(body): JsonBody<BackfillPostBody>,
) -> ApiResult<Json<BackfillResponse>> {
    let conf = match body.dag_run_conf.clone() {
        None | Some(Value::Null) => serde_json::json!({}),
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            return Err(ApiError::invalid(
                &["body", "dag_run_conf"],
                format!("dag_run_conf: Input should be a valid dictionary, got {other}"),
            ))
        }
    };
    match body.reprocess_behavior.as_deref() {
        None | Some("none") => {}
        Some("failed" | "completed") => {
            return Err(ApiError::bad_request(
                "Sluice backfills never re-run existing runs (reprocess_behavior must be none); clear those runs instead",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                &["body", "reprocess_behavior"],
                format!("reprocess_behavior: Input should be 'failed', 'completed' or 'none', got {other:?}"),
            ))
        }
    }
    if body.to_date < body.from_date {
        return Err(ApiError::invalid(
            &["body", "to_date"],
            "to_date: must not be before from_date",
        ));
    }
    let row = models::find_dag(&state.store, &body.dag_id).await?;
    let Some((_, dag)) = state.store.latest_dag(&body.dag_id).await? else {
        return Err(ApiError::not_found(format!(
            "Dag with id {} has no parsed version yet",
            body.dag_id
        )));
    };
    if !dag.schedule.is_scheduled() {
        return Err(ApiError::bad_request(format!(
            "Dag {} has no schedule, so it has no intervals to backfill; trigger it instead",
            body.dag_id
        )));
    }
    let mut intervals = dag.intervals_between(body.from_date, body.to_date);
    if intervals.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Dag {} has no schedule interval starting between {} and {}",
            body.dag_id,
            body.from_date.to_rfc3339(),
            body.to_date.to_rfc3339()
        )));
    }
    if body.run_backwards {
        intervals.reverse();
    }
    let actor = format!("api:{}", user.username);
    let (mut queued, mut existing, mut first_id) = (Vec::new(), 0, 0);
    for iv in &intervals {
        let new = NewRun {
            dag_id: body.dag_id.clone(),
            run_id: RunType::Backfill.run_id(iv.start),
            run_type: RunType::Backfill,
            logical_date: iv.start,
            data_interval_start: iv.start,
            data_interval_end: iv.end,
            conf: conf.clone(),
        };
        match state.store.create_run(&new, &actor).await? {
            Some(run) => {
                if first_id == 0 {
                    first_id = run.id;
                }
                queued.push(run.run_id);
            }
            None => existing += 1,
        }
    }
    if !queued.is_empty() {
        state.wake();
    }
    let ts = now();
    Ok(Json(BackfillResponse {
        id: first_id,
        dag_id: body.dag_id.clone(),
        from_date: body.from_date,
        to_date: body.to_date,
        dag_run_conf: conf,
        is_paused: row.is_paused,
        reprocess_behavior: "none".into(),
        max_active_runs: row.max_active_runs,
        created_at: ts,
        completed_at: None,
        updated_at: ts,
        dag_display_name: body.dag_id,
        queued_run_ids: queued,
        existing_runs: existing,
    }))
}
