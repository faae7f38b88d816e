//! Request extractors whose failures are 422s naming the field, and the parsing of
//! query values (timestamps in the forms clients send, lists given as repeated keys).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body; a body that does not deserialize is a 422 naming the field.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Deserializes JSON, turning errors into a 422 with the failing field's path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::invalid(
            &["body"],
            "Field required: the request needs a JSON body",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut loc = vec!["body"];
        let segments: Vec<&str> = if path == "." {
            Vec::new()
        } else {
            path.split('.').collect()
        };
        // serde reports a missing field at its parent: name the field itself.
        let msg = inner.to_string();
        let missing = msg
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .map(str::to_string);
        loc.extend(segments.iter().copied());
        match missing {
            Some(field) => {
                let mut loc: Vec<&str> = loc.clone();
                loc.push(&field);
                ApiError::invalid(&loc, format!("Field required: {field}"))
            }
            None => {
                let field = if segments.is_empty() {
                    "body".to_string()
                } else {
                    path.clone()
                };
                ApiError::invalid(&loc, format!("{field}: {}", strip_position(&msg)))
            }
        }
    })
}

/// serde_json's " at line 1 column 12" says nothing to an API user.
fn strip_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

/// Query parameters into `T` (repeated keys make lists: `state=a&state=b`). Fields
/// are strings here; handlers convert them with the helpers below, so errors name
/// the parameter.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        serde_html_form::from_str(q)
            .map(Query)
            .map_err(|e| ApiError::invalid(&["query"], format!("bad query string: {e}")))
    }
}

/// An optional integer parameter with a lower bound.
pub fn int(name: &str, v: &Option<String>, min: i64) -> Result<Option<i64>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let n: i64 = v.trim().parse().map_err(|_| {
        ApiError::invalid(
            &["query", name],
            format!("{name}: Input should be a valid integer, got {v:?}"),
        )
    })?;
    if n < min {
        return Err(ApiError::invalid(
            &["query", name],
            format!("{name}: Input should be greater than or equal to {min}"),
        ));
    }
    Ok(Some(n))
}

/// `limit` (default 50, as Airflow) and `offset`.
pub fn page(limit: &Option<String>, offset: &Option<String>) -> Result<(i64, i64), ApiError> {
    Ok((
        int("limit", limit, 0)?.unwrap_or(50),
        int("offset", offset, 0)?.unwrap_or(0),
    ))
}

pub fn boolean(name: &str, v: &Option<String>) -> Result<Option<bool>, ApiError> {
    match v.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(s) => match s.as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => Ok(Some(true)),
            "false" | "0" | "no" | "off" | "f" | "n" => Ok(Some(false)),
            _ => Err(ApiError::invalid(
                &["query", name],
                format!("{name}: Input should be a valid boolean, got {s:?}"),
            )),
        },
    }
}

/// A timestamp as clients send it: RFC 3339 (`Z` or an offset), an offset without a
/// colon (`+0000`, what Python's `%z` writes), no offset (UTC), or a bare date.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // A '+' that was not percent-encoded arrives as a space.
    let s = s.replace(' ', "+");
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%z",
        "%Y-%m-%dT%H:%M%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(&s, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    let naive = s.trim_end_matches("+");
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(naive, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(naive, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// An optional timestamp parameter.
pub fn time(name: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    parse_time(v).map(Some).ok_or_else(|| {
        ApiError::invalid(
            &["query", name],
            format!("{name}: Input should be a valid datetime (RFC 3339, e.g. 2024-08-01T00:00:00Z), got {v:?}"),
        )
    })
}

/// `order_by` values (`-field` descending), mapped through `column`; an unknown field
/// is a 400, as in Airflow.
pub fn order_by<C>(
    values: &[String],
    column: impl Fn(&str) -> Option<C>,
    allowed: &str,
) -> Result<Vec<(C, bool)>, ApiError> {
    let mut out = Vec::new();
    for v in values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        let (field, desc) = match v.strip_prefix('-') {
            Some(f) => (f, true),
            None => (v, false),
        };
        let col = column(field).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Ordering with '{field}' is disallowed or the attribute does not exist on the model; allowed: {allowed}"
            ))
        })?;
        out.push((col, desc));
    }
    Ok(out)
}

/// Airflow's `*_pattern` parameters: a case-insensitive substring where `%` and `_`
/// are wildcards, `|` separates alternatives and `~` matches everything.
pub fn pattern_matches(pattern: &Option<String>, value: &str) -> bool {
    let Some(p) = pattern else { return true };
    if p == "~" || p.is_empty() {
        return true;
    }
    let value = value.to_lowercase();
    p.split('|')
        .any(|alt| like(&format!("%{}%", alt.to_lowercase()), &value))
}

/// SQL LIKE on chars: `%` any run, `_` one char.
fn like(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    // dp[j]: pattern[..i] matches value[..j]
    let mut dp = vec![false; v.len() + 1];
    dp[0] = true;
    for c in &p {
        let mut next = vec![false; v.len() + 1];
        if *c == '%' {
            let mut any = false;
            for (n, d) in next.iter_mut().zip(&dp) {
                any |= *d;
                *n = any;
            }
        } else {
            for (j, vc) in v.iter().enumerate() {
                next[j + 1] = dp[j] && (*c == '_' || c == vc);
            }
        }
        dp = next;
    }
    dp[v.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_client_forms() {
        let want = "2024-08-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
        for s in [
            "2024-08-01T00:00:00Z",
            "2024-08-01T00:00:00+00:00",
            "2024-08-01T00:00:00.000000+0000",
            "2024-08-01T09:00:00+0900",
            "2024-08-01T00:00:00.000000 0000",
            "2024-08-01T00:00:00",
            "2024-08-01",
        ] {
            assert_eq!(parse_time(s), Some(want), "{s}");
        }
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches(&Some("etl".into()), "example_ETL"));
        assert!(pattern_matches(&Some("ex%l".into()), "example_etl"));
        assert!(pattern_matches(&Some("nope|amp".into()), "example"));
        assert!(pattern_matches(&Some("~".into()), "anything"));
        assert!(!pattern_matches(&Some("x_z".into()), "xz"));
        assert!(pattern_matches(&None, "x"));
    }
}
