//! The web UI: server-rendered pages over the same store and helpers as the REST API.
//!
//! Pages are minijinja templates embedded in the binary (`web/templates`), styled and
//! scripted by two embedded assets (`web/assets`), so the UI works with no internet
//! access and no build step. Each page marks the part that changes while runs
//! progress as its `live` block; `/ui/events` renders that block again every
//! [`live::INTERVAL`] and pushes it over server-sent events when it changed, and the
//! page swaps it in without a reload. Buttons call the REST API with the session
//! cookie (see [`crate::auth::SESSION_COOKIE`]), so the UI can do nothing the API
//! does not allow the same user.

mod gantt;
mod graph;
mod live;

pub(crate) use live::SharedRenders;
mod pages;
mod session;

use std::sync::LazyLock;

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use minijinja::Environment;

use crate::AppState;

/// Every page and static asset of the UI.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/dags") }))
        .route("/dags", get(pages::dag_list))
        .route("/dags/{dag_id}", get(pages::grid))
        .route("/dags/{dag_id}/graph", get(pages::graph))
        .route("/dags/{dag_id}/runs/{run_id}", get(pages::run))
        .route(
            "/dags/{dag_id}/runs/{run_id}/tasks/{task_id}",
            get(pages::task_try),
        )
        .route("/variables", get(pages::variables))
        .route("/connections", get(pages::connections))
        .route("/pools", get(pages::pools))
        .route("/import-errors", get(pages::import_errors))
        .route("/ui/events", get(live::events))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            session::require_session,
        ))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../assets/app.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// `s` percent-encoded for a URL path segment or query value.
fn url_part(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The templates, parsed once.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    macro_rules! add {
        ($($name:literal),*) => {$(
            env.add_template($name, include_str!(concat!("../../templates/", $name)))
                .expect(concat!("template ", $name, " parses"));
        )*};
    }
    add!(
        "base.html",
        "login.html",
        "dags.html",
        "dag_header.html",
        "grid.html",
        "graph.html",
        "run.html",
        "try.html",
        "variables.html",
        "connections.html",
        "pools.html",
        "import_errors.html",
        "error.html"
    );
    env.add_filter("dt", format_time);
    env.add_filter("duration", format_duration);
    env
});

/// `2026-11-22 06:30:12` (UTC) for an RFC 3339 time; empty for none.
fn format_time(v: Option<String>) -> String {
    v.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min` for milliseconds; empty for none.
fn format_duration(ms: Option<f64>) -> String {
    let Some(ms) = ms else {
        return String::new();
    };
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        let s = (ms / 1000.0) as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (ms / 60_000.0) as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// A rendered page, or the error page (with the status) when rendering failed.
fn render(name: &str, ctx: minijinja::Value) -> Response {
    match TEMPLATES.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("cannot render {name}: {e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render page {name}: {e}"),
            )
                .into_response()
        }
    }
}

/// Only the `live` block of a page, as `/ui/events` pushes it. `eval_to_state` runs
/// the template without writing the page; its suggested replacement
/// (`render_captured`) would render the whole page on every tick.
#[allow(deprecated)]
fn render_live(name: &str, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
    TEMPLATES
        .get_template(name)?
        .eval_to_state(ctx)?
        .render_block("live")
}

/// An error as a page: what went wrong, with the status the API would give.
fn error_page(user: Option<&crate::User>, status: StatusCode, message: &str) -> Response {
    let mut resp = render(
        "error.html",
        minijinja::context! { user => user.map(user_ctx), status => status.as_u16(), message },
    );
    *resp.status_mut() = status;
    resp
}

fn user_ctx(u: &crate::User) -> minijinja::Value {
    minijinja::context! { username => u.username, role => u.role, admin => u.is_admin() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        assert!(TEMPLATES.templates().count() >= 13);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Some(850.0)), "850 ms");
        assert_eq!(format_duration(Some(12_340.0)), "12.3 s");
        assert_eq!(format_duration(Some(245_000.0)), "4 min 05 s");
        assert_eq!(format_duration(Some(7_380_000.0)), "2 h 03 min");
        assert_eq!(format_duration(None), "");
    }
}
