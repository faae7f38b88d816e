//! `/api/v2/importErrors`: DAG files that failed to load (their DAGs keep running on
//! their last good version).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_core::Diagnostic;
use sluice_store::ImportErrorRow;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult, HTTPExceptionResponse, HTTPValidationError};
use crate::extract::{self, Query};
use crate::models;
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct ImportErrorResponse {
    /// Stable for a file: derived from its path.
    pub import_error_id: i64,
    pub timestamp: DateTime<Utc>,
    pub filename: String,
    pub bundle_name: Option<String>,
    /// Every problem in the file, one `PATH:LINE:COL: message` per line.
    pub stack_trace: String,
}

#[derive(Serialize, ToSchema)]
pub struct ImportErrorCollectionResponse {
    pub import_errors: Vec<ImportErrorResponse>,
    pub total_entries: i64,
}

/// FNV-1a of the path, 48 bits: a positive id that stays the same for a file.
fn error_id(fileloc: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in fileloc.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h & 0xffff_ffff_ffff) as i64
}

/// A stored import error as lines of `file:line:col: message`, as `sluice dags
/// validate` prints them (text that is not the stored diagnostics stays as it is).
pub(crate) fn error_lines(errors: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<Diagnostic>>(errors) {
        Ok(diags) => diags.iter().map(|d| d.to_string()).collect(),
        Err(_) => vec![errors.to_string()],
    }
}

fn response(e: ImportErrorRow) -> ImportErrorResponse {
    let trace = error_lines(&e.errors).join("\n");
    ImportErrorResponse {
        import_error_id: error_id(&e.fileloc),
        timestamp: e.updated_at,
        filename: e.fileloc,
        bundle_name: None,
        stack_trace: trace,
    }
}

#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct ImportErrorsQuery {
    #[param(value_type = Option<i64>, minimum = 0)]
    limit: Option<String>,
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
    /// `filename` (default), `timestamp`, `import_error_id`; `-` for descending.
    #[serde(default)]
    order_by: Vec<String>,
    filename_pattern: Option<String>,
}

/// List import errors.
#[utoipa::path(
    get,
    path = "/api/v2/importErrors",
    tag = "Import Error",
    params(ImportErrorsQuery),
    responses(
        (status = 200, description = "Import errors", body = ImportErrorCollectionResponse),
        (status = 422, body = HTTPValidationError),
    )
)]
pub async fn get_import_errors(
    State(state): State<AppState>,
    Query(q): Query<ImportErrorsQuery>,
) -> ApiResult<Json<ImportErrorCollectionResponse>> {
    let (limit, offset) = extract::page(&q.limit, &q.offset)?;
    let order = extract::order_by(
        &q.order_by,
        |f| match f {
            "filename" | "id" => Some(0),
            "timestamp" => Some(1),
            "import_error_id" => Some(2),
            _ => None,
        },
        "filename, timestamp, import_error_id",
    )?;
    let mut rows: Vec<ImportErrorResponse> = state
        .store
        .import_errors()
        .await?
        .into_iter()
        .filter(|e| extract::pattern_matches(&q.filename_pattern, &e.fileloc))
        .map(response)
        .collect();
    if let Some((col, desc)) = order.first() {
        rows.sort_by(|a, b| {
            let c = match col {
                1 => a.timestamp.cmp(&b.timestamp),
                2 => a.import_error_id.cmp(&b.import_error_id),
                _ => a.filename.cmp(&b.filename),
            };
            if *desc {
                c.reverse()
            } else {
                c
            }
        });
    }
    let total = rows.len() as i64;
    Ok(Json(ImportErrorCollectionResponse {
        import_errors: models::paginate(rows, limit, offset),
        total_entries: total,
    }))
}

/// Get an import error.
#[utoipa::path(
    get,
    path = "/api/v2/importErrors/{import_error_id}",
    tag = "Import Error",
    params(("import_error_id" = i64, Path)),
    responses(
        (status = 200, description = "The import error", body = ImportErrorResponse),
        (status = 404, body = HTTPExceptionResponse),
    )
)]
pub async fn get_import_error(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<ImportErrorResponse>> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::invalid(
            &["path", "import_error_id"],
            format!("import_error_id: Input should be a valid integer, got {id:?}"),
        )
    })?;
    state
        .store
        .import_errors()
        .await?
        .into_iter()
        .find(|e| error_id(&e.fileloc) == id)
        .map(|e| Json(response(e)))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "The ImportError with import_error_id: `{id}` was not found"
            ))
        })
}
