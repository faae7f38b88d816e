//! `/ui/events`: a page's live block, pushed over server-sent events when it changes.
//!
//! The server re-renders the block with the page's own context builder every
//! [`INTERVAL`] while the page is open, and sends it only when its text changed. That
//! works whatever process (scheduler, worker) changed the store, needs no change
//! feed, and costs one page render per open page per interval, which the page
//! benchmark keeps in milliseconds.

use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::Stream;
use serde::Deserialize;

use super::pages;
use crate::error::ApiResult;
use crate::{AppState, User};

/// How often an open page is re-rendered.
pub const INTERVAL: Duration = Duration::from_millis(500);

#[derive(Deserialize, Clone, Debug)]
pub struct LiveQuery {
    view: String,
    dag_id: Option<String>,
    run_id: Option<String>,
    task_id: Option<String>,
    map_index: Option<i64>,
    try_number: Option<i64>,
    runs: Option<usize>,
}

async fn render_view(state: &AppState, user: &User, q: &LiveQuery) -> ApiResult<Option<String>> {
    let need = |v: &Option<String>, what: &str| {
        v.clone().ok_or_else(|| {
            crate::error::ApiError::bad_request(format!("view {} needs {what}", q.view))
        })
    };
    let (template, ctx) = match q.view.as_str() {
        "dags" => ("dags.html", pages::dag_list_ctx(state, user).await?),
        "grid" => (
            "grid.html",
            pages::grid_ctx(
                state,
                user,
                &need(&q.dag_id, "dag_id")?,
                q.runs.unwrap_or(25),
            )
            .await?,
        ),
        "graph" => (
            "graph.html",
            pages::graph_ctx(
                state,
                user,
                &need(&q.dag_id, "dag_id")?,
                q.run_id.as_deref(),
            )
            .await?,
        ),
        "run" => (
            "run.html",
            pages::run_ctx(
                state,
                user,
                &need(&q.dag_id, "dag_id")?,
                &need(&q.run_id, "run_id")?,
            )
            .await?,
        ),
        "try" => {
            let tq = pages::TryQuery {
                map_index: q.map_index,
                try_number: q.try_number,
            };
            (
                "try.html",
                pages::try_ctx(
                    state,
                    user,
                    &need(&q.dag_id, "dag_id")?,
                    &need(&q.run_id, "run_id")?,
                    &need(&q.task_id, "task_id")?,
                    &tq,
                )
                .await?,
            )
        }
        other => {
            return Err(crate::error::ApiError::bad_request(format!(
                "unknown view {other:?}: one of dags, grid, graph, run, try"
            )))
        }
    };
    super::render_live(template, ctx)
        .map(Some)
        .map_err(|e| crate::error::ApiError::internal(format!("cannot render {template}: {e}")))
}

fn digest(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

pub async fn events(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Query(q): Query<LiveQuery>,
) -> Response {
    // A bad view is answered at once, not as an endless stream of errors.
    if let Err(e) = render_view(&state, &user, &q).await {
        return e.into_response();
    }
    Sse::new(stream(state, user, q))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn stream(
    state: AppState,
    user: User,
    q: LiveQuery,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let ticker = tokio::time::interval(INTERVAL);
    futures::stream::unfold((ticker, None::<u64>), move |(mut ticker, last)| {
        let (state, user, q) = (state.clone(), user.clone(), q.clone());
        async move {
            loop {
                ticker.tick().await;
                match render_view(&state, &user, &q).await {
                    Ok(Some(html)) => {
                        let d = digest(&html);
                        if last != Some(d) {
                            let ev = Event::default().event("live").data(html);
                            return Some((Ok(ev), (ticker, Some(d))));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let ev = Event::default().event("problem").data(e.detail_text());
                        return Some((Ok(ev), (ticker, last)));
                    }
                }
            }
        }
    })
}
