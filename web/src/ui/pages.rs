//! The pages. Each has a context builder (what the page shows, read from the store)
//! and a handler; `/ui/events` calls the same builders for the live blocks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Utc};
use minijinja::context;
use minijinja::Value as Ctx;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_core::Dag;
use sluice_store::{RunRow, TiRow};

use super::{error_page, render, url_part, user_ctx};
use crate::error::{ApiError, ApiResult};
use crate::{AppState, User};

/// Runs the grid shows unless asked otherwise, and at most.
const GRID_RUNS: usize = 25;
const GRID_RUNS_MAX: usize = 365;
/// Latest runs shown per DAG in the DAG list.
const LIST_RUNS: i64 = 10;

/// A page, or its error page.
fn page(user: &User, name: &str, built: ApiResult<Ctx>) -> Response {
    match built {
        Ok(ctx) => render(name, ctx),
        Err(e) => error_page(Some(user), e.status, &e.detail_text()),
    }
}

/// The `/ui/events` address that streams a page's live block.
fn live_url(params: &[(&str, Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    format!("/ui/events?{}", q.finish())
}

fn millis(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Option<f64> {
    Some((end? - start?).num_milliseconds() as f64)
}

#[derive(Serialize)]
struct RunCell {
    run_id: String,
    state: String,
    run_type: String,
    logical_date: DateTime<Utc>,
    start_date: Option<DateTime<Utc>>,
    end_date: Option<DateTime<Utc>>,
    duration_ms: Option<f64>,
    href: String,
}

fn run_cell(run: &RunRow) -> RunCell {
    RunCell {
        run_id: run.run_id.clone(),
        state: run.state.clone(),
        run_type: run.run_type.clone(),
        logical_date: run.logical_date,
        start_date: run.start_date,
        end_date: run.end_date,
        duration_ms: millis(
            run.start_date,
            run.end_date.or(run.start_date.map(|_| Utc::now())),
        ),
        href: format!(
            "/dags/{}/runs/{}",
            url_part(&run.dag_id),
            url_part(&run.run_id)
        ),
    }
}

/// The conf a trigger starts from: the DAG's params with their defaults.
fn params_json(dag: Option<&Dag>) -> String {
    let params = dag
        .map(|d| Value::Object(d.params.clone()))
        .unwrap_or_else(|| Value::Object(Default::default()));
    serde_json::to_string_pretty(&params).unwrap_or_else(|_| "{}".into())
}

// ---- DAG list ----

pub(super) async fn dag_list_ctx(state: &AppState, user: &User) -> ApiResult<Ctx> {
    let import_errors = state.store.import_errors().await?;
    let broken: HashSet<String> = import_errors.iter().map(|e| e.fileloc.clone()).collect();
    let summaries = state.store.run_summaries().await?;
    let mut dags = Vec::new();
    for row in state
        .store
        .dags()
        .await?
        .into_iter()
        .filter(|d| d.is_active)
    {
        let (resp, dag) = crate::dags::dag_response(state, &row, &broken).await?;
        let mut runs = state.store.runs(&row.dag_id, LIST_RUNS).await?;
        runs.reverse();
        let active = summaries.get(&row.dag_id).map(|s| s.1).unwrap_or(0);
        dags.push(context! {
            dag_id => row.dag_id,
            href => format!("/dags/{}", url_part(&row.dag_id)),
            description => row.description,
            paused => row.is_paused,
            schedule => resp.timetable_summary,
            tags => row.tag_list(),
            next_run => resp.next_dagrun_logical_date,
            next_run_after => resp.next_dagrun_run_after,
            runs => runs.iter().map(run_cell).collect::<Vec<_>>(),
            active_runs => active,
            params => params_json(dag.as_deref()),
            has_import_errors => resp.has_import_errors,
        });
    }
    Ok(context! {
        user => user_ctx(user),
        nav => "dags",
        dags,
        import_error_count => import_errors.len(),
        live => live_url(&[("view", Some("dags".into()))]),
    })
}

pub async fn dag_list(State(state): State<AppState>, Extension(user): Extension<User>) -> Response {
    page(&user, "dags.html", dag_list_ctx(&state, &user).await)
}

// ---- what every DAG page shows on top ----

async fn dag_header(state: &AppState, dag_id: &str) -> ApiResult<(Ctx, Arc<Dag>)> {
    let row = crate::models::find_dag(&state.store, dag_id).await?;
    let (resp, dag) = crate::dags::dag_response(state, &row, &HashSet::new()).await?;
    let dag = dag
        .ok_or_else(|| ApiError::not_found(format!("DAG {dag_id} has no parsed definition yet")))?;
    let header = context! {
        dag_id => row.dag_id,
        href => format!("/dags/{}", url_part(dag_id)),
        graph_href => format!("/dags/{}/graph", url_part(dag_id)),
        description => row.description,
        paused => row.is_paused,
        active => row.is_active,
        schedule => resp.timetable_summary,
        tags => row.tag_list(),
        fileloc => row.fileloc,
        next_run => resp.next_dagrun_logical_date,
        params => params_json(Some(&dag)),
    };
    Ok((header, dag))
}

// ---- grid ----

#[derive(Deserialize, Default)]
pub struct GridQuery {
    runs: Option<usize>,
}

/// Which state a group of task instances (a mapped task) shows: the one that needs
/// attention first.
fn summary_state<'a>(states: impl Iterator<Item = &'a str>) -> String {
    const ORDER: [&str; 11] = [
        "failed",
        "upstream_failed",
        "up_for_retry",
        "running",
        "queued",
        "scheduled",
        "none",
        "removed",
        "deferred",
        "success",
        "skipped",
    ];
    let seen: HashSet<&str> = states.collect();
    ORDER
        .iter()
        .find(|s| seen.contains(**s))
        .map(|s| s.to_string())
        .unwrap_or_else(|| "none".into())
}

fn try_href(run: &RunRow, task_id: &str, map_index: i64) -> String {
    let mut href = format!(
        "/dags/{}/runs/{}/tasks/{}",
        url_part(&run.dag_id),
        url_part(&run.run_id),
        url_part(task_id)
    );
    if map_index >= 0 {
        href.push_str(&format!("?map_index={map_index}"));
    }
    href
}

pub(super) async fn grid_ctx(
    state: &AppState,
    user: &User,
    dag_id: &str,
    n_runs: usize,
) -> ApiResult<Ctx> {
    let (header, dag) = dag_header(state, dag_id).await?;
    let n_runs = n_runs.clamp(1, GRID_RUNS_MAX);
    let mut runs = state.store.runs(dag_id, n_runs as i64).await?;
    runs.reverse();
    let pks: Vec<i64> = runs.iter().map(|r| r.id).collect();
    let tis = state.store.task_instances_of_runs(&pks).await?;
    // (run pk, task id) → its task instances (several when mapped).
    let mut by_cell: HashMap<(i64, &str), Vec<&TiRow>> = HashMap::new();
    for ti in &tis {
        by_cell
            .entry((ti.dag_run_id, ti.task_id.as_str()))
            .or_default()
            .push(ti);
    }
    let tasks: Vec<Ctx> = dag
        .tasks
        .values()
        .map(|t| {
            let cells: Vec<Ctx> = runs
                .iter()
                .map(|run| match by_cell.get(&(run.id, t.task_id.as_str())) {
                    None => context! { state => "none", href => Option::<String>::None, title => format!("{}: not created in {}", t.task_id, run.run_id) },
                    Some(group) if group.len() == 1 => {
                        let ti = group[0];
                        context! {
                            state => ti.state_label(),
                            href => try_href(run, &t.task_id, ti.map_index),
                            title => format!("{} in {}: {}{}", t.task_id, run.run_id, ti.state_label(),
                                ti.duration_ms.map(|d| format!(", {}", super::format_duration(Some(d as f64)))).unwrap_or_default()),
                        }
                    }
                    Some(group) => {
                        let state = summary_state(group.iter().map(|ti| ti.state_label()));
                        let done = group.iter().filter(|ti| ti.state.as_deref() == Some("success")).count();
                        context! {
                            state,
                            href => format!("{}#tis", run_cell(run).href),
                            title => format!("{} in {}: {} mapped ({done} succeeded)", t.task_id, run.run_id, group.len()),
                            count => group.len(),
                        }
                    }
                })
                .collect();
            context! { task_id => t.task_id, kind => t.kind, mapped => t.map_over.is_some(), cells }
        })
        .collect();
    Ok(context! {
        user => user_ctx(user),
        nav => "dags",
        tab => "grid",
        dag => header,
        runs => runs.iter().map(run_cell).collect::<Vec<_>>(),
        tasks,
        n_runs,
        live => live_url(&[("view", Some("grid".into())), ("dag_id", Some(dag_id.into())), ("runs", Some(n_runs.to_string()))]),
    })
}

pub async fn grid(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path(dag_id): Path<String>,
    Query(q): Query<GridQuery>,
) -> Response {
    let n = q.runs.unwrap_or(GRID_RUNS);
    page(
        &user,
        "grid.html",
        grid_ctx(&state, &user, &dag_id, n).await,
    )
}

// ---- graph ----

#[derive(Deserialize, Default)]
pub struct RunQuery {
    run_id: Option<String>,
}

pub(super) async fn graph_ctx(
    state: &AppState,
    user: &User,
    dag_id: &str,
    run_id: Option<&str>,
) -> ApiResult<Ctx> {
    let (header, dag) = dag_header(state, dag_id).await?;
    let recent = state.store.runs(dag_id, GRID_RUNS as i64).await?;
    let run = match run_id {
        Some(id) => Some(crate::models::find_run(&state.store, dag_id, id).await?),
        None => recent.first().cloned(),
    };
    let mut states: HashMap<String, (String, Option<String>, usize)> = HashMap::new();
    if let Some(run) = &run {
        let tis = state.store.task_instances(run.id).await?;
        let mut groups: HashMap<&str, Vec<&TiRow>> = HashMap::new();
        for ti in &tis {
            groups.entry(ti.task_id.as_str()).or_default().push(ti);
        }
        for (task, group) in groups {
            let st = summary_state(group.iter().map(|t| t.state_label()));
            let href = if group.len() == 1 {
                try_href(run, task, group[0].map_index)
            } else {
                format!("{}#tis", run_cell(run).href)
            };
            states.insert(task.to_string(), (st, Some(href), group.len()));
        }
    }
    let svg = super::graph::render(&dag, &states);
    let selected = run.as_ref().map(|r| r.run_id.clone());
    Ok(context! {
        user => user_ctx(user),
        nav => "dags",
        tab => "graph",
        dag => header,
        runs => recent.iter().map(run_cell).collect::<Vec<_>>(),
        selected,
        run => run.as_ref().map(run_cell),
        svg => Ctx::from_safe_string(svg),
        live => live_url(&[("view", Some("graph".into())), ("dag_id", Some(dag_id.into())), ("run_id", run_id.map(str::to_string))]),
    })
}

pub async fn graph(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path(dag_id): Path<String>,
    Query(q): Query<RunQuery>,
) -> Response {
    page(
        &user,
        "graph.html",
        graph_ctx(&state, &user, &dag_id, q.run_id.as_deref()).await,
    )
}

// ---- run detail ----

pub(super) async fn run_ctx(
    state: &AppState,
    user: &User,
    dag_id: &str,
    run_id: &str,
) -> ApiResult<Ctx> {
    let (header, dag) = dag_header(state, dag_id).await?;
    let run = crate::models::find_run(&state.store, dag_id, run_id).await?;
    let tis = state.store.task_instances(run.id).await?;
    let tries = state.store.run_tries(run.id).await?;
    // Task order of the DAG, then map index.
    let order: HashMap<&str, usize> = dag
        .tasks
        .keys()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut tis_sorted: Vec<&TiRow> = tis.iter().collect();
    tis_sorted.sort_by_key(|t| {
        (
            order.get(t.task_id.as_str()).copied().unwrap_or(usize::MAX),
            t.map_index,
        )
    });
    let rows: Vec<Ctx> = tis_sorted
        .iter()
        .map(|ti| {
            context! {
                task_id => ti.task_id,
                map_index => ti.map_index,
                state => ti.state_label(),
                try_number => ti.try_number,
                max_tries => ti.max_tries,
                start_date => ti.start_date,
                end_date => ti.end_date,
                duration_ms => ti.duration_ms.map(|d| d as f64),
                href => try_href(&run, &ti.task_id, ti.map_index),
                error => ti.error,
            }
        })
        .collect();
    let gantt = super::gantt::render(&run, &tis_sorted, &tries, Utc::now());
    let conf = serde_json::to_string_pretty(&run.conf_json()).unwrap_or_default();
    Ok(context! {
        user => user_ctx(user),
        nav => "dags",
        tab => "run",
        dag => header,
        run => run_cell(&run),
        data_interval_start => run.data_interval_start,
        data_interval_end => run.data_interval_end,
        queued_at => run.queued_at,
        note => run.note,
        conf,
        tis => rows,
        gantt => Ctx::from_safe_string(gantt),
        run_api => format!("/api/v2/dags/{}/dagRuns/{}", url_part(dag_id), url_part(run_id)),
        live => live_url(&[("view", Some("run".into())), ("dag_id", Some(dag_id.into())), ("run_id", Some(run_id.into()))]),
    })
}

pub async fn run(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path((dag_id, run_id)): Path<(String, String)>,
) -> Response {
    page(
        &user,
        "run.html",
        run_ctx(&state, &user, &dag_id, &run_id).await,
    )
}

// ---- task instance / try ----

#[derive(Deserialize, Default, Clone)]
pub struct TryQuery {
    pub map_index: Option<i64>,
    pub try_number: Option<i64>,
}

pub(super) async fn try_ctx(
    state: &AppState,
    user: &User,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    q: &TryQuery,
) -> ApiResult<Ctx> {
    let (header, _) = dag_header(state, dag_id).await?;
    let run = crate::models::find_run(&state.store, dag_id, run_id).await?;
    let map_index = q.map_index.unwrap_or(-1);
    let ti = crate::task_instances::find_ti(state, &run, task_id, q.map_index).await?;
    let tries = state.store.tries(ti.id).await?;
    let selected = q.try_number.unwrap_or(ti.try_number);
    let definition = state.store.dag_version(run.dag_version_id).await?;
    let task_def = definition.task(task_id);
    let rendered = match state.store.try_rendered_fields(ti.id, selected).await? {
        Some(text) => serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok()),
        None => None,
    };
    let args = task_def
        .map(|t| serde_json::to_string_pretty(&Value::Object(t.args.clone())).unwrap_or_default());
    let xcom_row = state
        .store
        .xcoms(run.id, Some(&[task_id.to_string()]))
        .await?
        .into_iter()
        .find(|x| x.map_index == map_index && x.key == "return_value");
    let xcom = match xcom_row {
        Some(row) => Some(crate::xcom::masked_value(state, &row, false).await?),
        None => None,
    };
    let xcom_text = xcom.map(|v| serde_json::to_string_pretty(&v).unwrap_or_default());
    let base = try_href(&run, task_id, -1);
    let try_rows: Vec<Ctx> = tries
        .iter()
        .map(|t| {
            let mut href = format!("{base}?try_number={}", t.try_number);
            if map_index >= 0 {
                href.push_str(&format!("&map_index={map_index}"));
            }
            context! {
                try_number => t.try_number,
                state => t.state,
                start_date => t.start_date,
                end_date => t.end_date,
                duration_ms => t.duration_ms.map(|d| d as f64),
                hostname => t.hostname,
                error => t.error,
                records_in => t.records_in,
                records_out => t.records_out,
                href,
                selected => t.try_number == selected,
            }
        })
        .collect();
    let selected_try = tries.iter().find(|t| t.try_number == selected);
    let api_ti = format!(
        "/api/v2/dags/{}/dagRuns/{}/taskInstances/{}",
        url_part(dag_id),
        url_part(run_id),
        url_part(task_id)
    );
    let log_url = selected_try.map(|t| {
        let mut u = format!("{api_ti}/logs/{}", t.try_number);
        if map_index >= 0 {
            u.push_str(&format!("?map_index={map_index}"));
        }
        u
    });
    Ok(context! {
        user => user_ctx(user),
        nav => "dags",
        tab => "try",
        dag => header,
        run => run_cell(&run),
        ti => context! {
            task_id => ti.task_id,
            map_index,
            state => ti.state_label(),
            try_number => ti.try_number,
            max_tries => ti.max_tries,
            start_date => ti.start_date,
            end_date => ti.end_date,
            duration_ms => ti.duration_ms.map(|d| d as f64),
            hostname => ti.hostname,
            pool => ti.pool,
            error => ti.error,
            kind => task_def.map(|t| t.kind.clone()),
            finished => ti.ti_state().is_some_and(|s| s.is_finished()),
            api => if map_index >= 0 { format!("{api_ti}/{map_index}") } else { api_ti.clone() },
        },
        tries => try_rows,
        selected_try => selected,
        selected_finished => selected_try.is_some_and(|t| t.end_date.is_some()),
        rendered,
        args,
        xcom => xcom_text,
        log_url,
        clear_url => format!("/api/v2/dags/{}/clearTaskInstances", url_part(dag_id)),
        live => live_url(&[("view", Some("try".into())), ("dag_id", Some(dag_id.into())), ("run_id", Some(run_id.into())), ("task_id", Some(task_id.into())), ("map_index", q.map_index.map(|m| m.to_string())), ("try_number", q.try_number.map(|t| t.to_string()))]),
    })
}

pub async fn task_try(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
    Path((dag_id, run_id, task_id)): Path<(String, String, String)>,
    Query(q): Query<TryQuery>,
) -> Response {
    page(
        &user,
        "try.html",
        try_ctx(&state, &user, &dag_id, &run_id, &task_id, &q).await,
    )
}

// ---- variables, connections, pools, import errors ----

pub async fn variables(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
) -> Response {
    let built = async {
        let rows: Vec<Ctx> = state
            .store
            .variables()
            .await?
            .into_iter()
            .map(|v| {
                let masked = crate::connections::sensitive(&v.key);
                let r = crate::variables::response(v);
                context! {
                    key => r.key,
                    value => r.value,
                    description => r.description,
                    masked => masked,
                }
            })
            .collect();
        Ok(context! { user => user_ctx(&user), nav => "variables", variables => rows })
    };
    page(&user, "variables.html", built.await)
}

pub async fn connections(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
) -> Response {
    let built = async {
        let all = crate::connections::all(&state).await?;
        let rows: Vec<Ctx> = all
            .values()
            .map(|e| {
                let r = crate::connections::response(e);
                context! {
                    connection_id => r.connection_id,
                    conn_type => r.conn_type,
                    description => r.description,
                    host => r.host,
                    port => r.port,
                    login => r.login,
                    schema => r.schema,
                    password => r.password,
                    extra => r.extra,
                    stored => e.stored,
                }
            })
            .collect();
        Ok(context! { user => user_ctx(&user), nav => "connections", connections => rows })
    };
    page(&user, "connections.html", built.await)
}

pub async fn pools(State(state): State<AppState>, Extension(user): Extension<User>) -> Response {
    let built = async {
        let rows = crate::pools::responses(&state, state.store.pools().await?).await?;
        Ok(context! { user => user_ctx(&user), nav => "pools", pools => rows })
    };
    page(&user, "pools.html", built.await)
}

pub async fn import_errors(
    State(state): State<AppState>,
    Extension(user): Extension<User>,
) -> Response {
    let built = async {
        let rows: Vec<Ctx> = state
            .store
            .import_errors()
            .await?
            .into_iter()
            .map(|e| {
                let lines = crate::import_errors::error_lines(&e.errors);
                context! { fileloc => e.fileloc, updated_at => e.updated_at, errors => lines }
            })
            .collect();
        Ok(context! { user => user_ctx(&user), nav => "import_errors", import_errors => rows })
    };
    page(&user, "import_errors.html", built.await)
}
