//! The API's error type. Every error is JSON with a `detail`, as in Airflow: a sentence
//! for 400/401/403/404/409, and for 422 (a body or query that does not validate) a
//! list of `{type, loc, msg}` naming the field, FastAPI's shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
use sluice_store::StoreError;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: Value,
}

/// `{"detail": "..."}`.
#[derive(Serialize, ToSchema)]
pub struct HTTPExceptionResponse {
    pub detail: String,
}

/// One field that did not validate.
#[derive(Serialize, ToSchema)]
pub struct ValidationError {
    /// Where: `["body", "conf"]`, `["query", "limit"]`.
    pub loc: Vec<String>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `{"detail": [ValidationError, ...]}` (status 422).
#[derive(Serialize, ToSchema)]
pub struct HTTPValidationError {
    pub detail: Vec<ValidationError>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            detail: Value::String(detail.into()),
        }
    }

    /// The detail as text: the sentence, or a 422's list as JSON.
    pub fn detail_text(&self) -> String {
        match &self.detail {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn conflict(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    /// 422 for one field: `loc` is where it is (`["body", "conf"]`).
    pub fn invalid(loc: &[&str], msg: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: json!([{
                "type": "value_error",
                "loc": loc,
                "msg": msg.into(),
            }]),
        }
    }

    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        tracing::error!("API request failed: {err}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {err}"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { what } => {
                let mut chars = what.chars();
                let first: String = chars
                    .next()
                    .map(|c| c.to_uppercase().collect())
                    .unwrap_or_default();
                ApiError::not_found(format!("{first}{} was not found", chars.as_str()))
            }
            StoreError::Invalid(msg) => ApiError::bad_request(msg),
            StoreError::Conflict(msg) => ApiError::conflict(msg),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(json!({ "detail": self.detail }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer, Basic realm=\"sluice\""),
            );
        }
        resp
    }
}
