//! The REST API end to end, on SQLite and PostgreSQL: each test serves the router on
//! 127.0.0.1:0 over a fresh migrated store and talks HTTP to it.

mod common;

use std::time::Duration;

use common::{both, both_without_key, into_resp, ADMIN_PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const HOURLY: &str = r#"
[dag]
id = "hourly_etl"
description = "Hourly ETL"
schedule = "@hourly"
start_date = 2024-01-01
catchup = false
tags = ["etl", "prod"]
max_active_runs = 3
[tasks.a]
kind = "noop"
[tasks.b]
kind = "noop"
upstream = ["a"]
"#;

const MANUAL: &str = r#"
[dag]
id = "manual_report"
schedule = "None"
tags = ["report"]
[tasks.only]
kind = "noop"
"#;

const OTHER: &str = r#"
[dag]
id = "another_dag"
schedule = "@daily"
start_date = 2024-01-01
tags = ["etl"]
[tasks.x]
kind = "noop"
"#;

fn ids(body: &Value, list: &str, field: &str) -> Vec<String> {
    body[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {body}"))
        .iter()
        .map(|d| d[field].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test]
async fn health_needs_no_token_and_everything_else_does() {
    for (backend, api) in both().await {
        let r = api
            .send(Method::GET, "/api/v2/monitor/health", None, None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        assert_eq!(r.body["metadatabase"]["status"], "healthy", "{backend}");

        let r = api.send(Method::GET, "/api/v2/dags", None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{backend}: {r:?}");
        assert!(r.detail().contains("Not authenticated"), "{backend}: {r:?}");
        let r = api
            .send(Method::GET, "/api/v2/dags", Some("not-a-jwt"), None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{backend}: {r:?}");
        assert!(r.detail().contains("invalid token"), "{backend}: {r:?}");

        // Wrong password: 401, and no token.
        let r = api
            .send(
                Method::POST,
                "/auth/token",
                None,
                Some(json!({"username": "admin", "password": "nope"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{backend}: {r:?}");
        // Missing password: 422 naming the field.
        let r = api
            .send(
                Method::POST,
                "/auth/token",
                None,
                Some(json!({"username": "admin"})),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{backend}: {r:?}"
        );
        assert_eq!(
            r.body["detail"][0]["loc"],
            json!(["body", "password"]),
            "{backend}: {r:?}"
        );

        // Form-encoded credentials work too.
        let r = into_resp(
            api.client
                .post(format!("{}/auth/token", api.base))
                .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{backend}: {r:?}");
        let token = r.body["access_token"].as_str().unwrap().to_string();
        let r = api
            .send(Method::GET, "/api/v2/dags", Some(&token), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        assert_eq!(r.body["total_entries"], 0, "{backend}: {r:?}");
        // Version is public, as in Airflow (its client sends no token there).
        let r = api.send(Method::GET, "/api/v2/version", None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        assert!(r.body["version"].is_string());

        // HTTP basic auth, for scripts.
        let r = into_resp(
            api.client
                .get(format!("{}/api/v2/dags", api.base))
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        let r = into_resp(
            api.client
                .get(format!("{}/api/v2/dags", api.base))
                .basic_auth("admin", Some("wrong"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{backend}: {r:?}");
        // Verified credentials are cached (as a keyed digest): the right ones still work.
        for _ in 0..3 {
            let r = api
                .client
                .get(format!("{}/api/v2/version", api.base))
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }

        // A viewer reads but cannot change anything.
        api.add_dag(MANUAL).await;
        let viewer = api.viewer.clone();
        let r = api
            .send(Method::GET, "/api/v2/dags", Some(&viewer), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        for (method, path, body) in [
            (
                Method::POST,
                "/api/v2/dags/manual_report/dagRuns",
                json!({"conf": {}}),
            ),
            (
                Method::PATCH,
                "/api/v2/dags/manual_report",
                json!({"is_paused": true}),
            ),
            (
                Method::POST,
                "/api/v2/dags/manual_report/clearTaskInstances",
                json!({}),
            ),
            (Method::DELETE, "/api/v2/variables/x", json!(null)),
        ] {
            let r = api
                .send(method.clone(), path, Some(&viewer), Some(body))
                .await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{backend} {method} {path}: {r:?}"
            );
            assert!(r.detail().contains("viewer"), "{backend}: {r:?}");
        }
        assert!(api
            .store
            .runs("manual_report", 10)
            .await
            .unwrap()
            .is_empty());

        // Unknown paths are JSON 404s.
        let r = api.get("/api/v2/nope").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{backend}: {r:?}");
        api.stop().await;
    }
}

#[tokio::test]
async fn dags_list_filter_paginate_and_pause() {
    for (backend, api) in both().await {
        api.add_dag(HOURLY).await;
        api.add_dag(MANUAL).await;
        api.add_dag(OTHER).await;

        let all = api.ok("/api/v2/dags").await;
        assert_eq!(all["total_entries"], 3, "{backend}: {all}");
        assert_eq!(
            ids(&all, "dags", "dag_id"),
            ["another_dag", "hourly_etl", "manual_report"]
        );
        let d = &all["dags"][1];
        assert_eq!(d["dag_display_name"], "hourly_etl");
        assert_eq!(d["is_paused"], false);
        assert_eq!(d["is_stale"], false);
        assert_eq!(d["timetable_summary"], "0 * * * *", "{d}");
        assert_eq!(d["max_active_runs"], 3);
        assert_eq!(
            d["tags"][0],
            json!({"name": "etl", "dag_id": "hourly_etl", "dag_display_name": "hourly_etl"})
        );
        assert!(d["next_dagrun_logical_date"].is_string(), "{d}");
        assert!(d["next_dagrun_run_after"].is_string(), "{d}");
        assert_eq!(d["fileloc"], "/dags/hourly_etl.toml");
        assert!(d["owners"].is_array() && d["file_token"].is_string());

        let page = api.ok("/api/v2/dags?limit=1&offset=1").await;
        assert_eq!(page["total_entries"], 3);
        assert_eq!(ids(&page, "dags", "dag_id"), ["hourly_etl"]);
        let page = api.ok("/api/v2/dags?order_by=-dag_id&limit=2").await;
        assert_eq!(
            ids(&page, "dags", "dag_id"),
            ["manual_report", "hourly_etl"]
        );
        let tagged = api.ok("/api/v2/dags?tags=etl").await;
        assert_eq!(
            ids(&tagged, "dags", "dag_id"),
            ["another_dag", "hourly_etl"]
        );
        let tagged = api
            .ok("/api/v2/dags?tags=etl&tags=prod&tags_match_mode=all")
            .await;
        assert_eq!(ids(&tagged, "dags", "dag_id"), ["hourly_etl"]);
        let tagged = api.ok("/api/v2/dags?tags=report&tags=prod").await;
        assert_eq!(tagged["total_entries"], 2);
        let pattern = api.ok("/api/v2/dags?dag_id_pattern=ETL").await;
        assert_eq!(ids(&pattern, "dags", "dag_id"), ["hourly_etl"]);

        // Pause one; filter by it.
        let r = api
            .patch(
                "/api/v2/dags/manual_report?update_mask=is_paused",
                json!({"is_paused": true}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        assert_eq!(r.body["is_paused"], true);
        let paused = api.ok("/api/v2/dags?paused=true").await;
        assert_eq!(ids(&paused, "dags", "dag_id"), ["manual_report"]);
        let unpaused = api.ok("/api/v2/dags?paused=false").await;
        assert_eq!(unpaused["total_entries"], 2);

        // Details.
        let det = api.ok("/api/v2/dags/hourly_etl/details").await;
        assert_eq!(det["catchup"], false, "{det}");
        assert_eq!(det["timezone"], "UTC");
        assert_eq!(det["start_date"], "2024-01-01T00:00:00Z");
        assert_eq!(det["latest_dag_version"]["version_number"], 1);
        assert_eq!(det["dag_id"], "hourly_etl");

        // Errors: 404 names the DAG; 422 names the field.
        let r = api.get("/api/v2/dags/missing").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.detail().contains("missing"), "{r:?}");
        let r = api
            .patch("/api/v2/dags/hourly_etl", json!({"is_paused": "yes"}))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(
            r.body["detail"][0]["loc"],
            json!(["body", "is_paused"]),
            "{r:?}"
        );
        let r = api.patch("/api/v2/dags/hourly_etl", json!({})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(
            r.body["detail"][0]["loc"],
            json!(["body", "is_paused"]),
            "{r:?}"
        );
        let r = api.get("/api/v2/dags?limit=-1").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(
            r.body["detail"][0]["loc"],
            json!(["query", "limit"]),
            "{r:?}"
        );
        let r = api.get("/api/v2/dags?paused=maybe").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert!(r.detail().contains("paused"), "{r:?}");
        let r = api.get("/api/v2/dags?order_by=color").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
        api.stop().await;
    }
}

#[tokio::test]
async fn dag_runs_trigger_list_filter_and_errors() {
    for (backend, api) in both().await {
        api.add_dag(HOURLY).await;
        api.add_dag(MANUAL).await;

        // Trigger with conf, id, logical date and note.
        let r = api
            .post(
                "/api/v2/dags/hourly_etl/dagRuns",
                json!({"dag_run_id": "run_one", "logical_date": "2024-03-01T10:00:00Z", "conf": {"rows": 5}, "note": "by test"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        let run = &r.body;
        assert_eq!(run["dag_run_id"], "run_one");
        assert_eq!(run["state"], "queued");
        assert_eq!(run["run_type"], "manual");
        assert_eq!(run["conf"], json!({"rows": 5}));
        assert_eq!(run["note"], "by test");
        assert_eq!(run["logical_date"], "2024-03-01T10:00:00Z");
        assert_eq!(run["run_after"], "2024-03-01T10:00:00Z");
        assert_eq!(run["dag_versions"][0]["version_number"], 1);
        // Same id again: 409.
        let r = api
            .post(
                "/api/v2/dags/hourly_etl/dagRuns",
                json!({"dag_run_id": "run_one"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{backend}: {r:?}");
        assert!(r.detail().contains("run_one"), "{r:?}");
        // Same logical date, other id: 409 too (one run per logical date).
        let r = api
            .post(
                "/api/v2/dags/hourly_etl/dagRuns",
                json!({"dag_run_id": "run_dup", "logical_date": "2024-03-01T10:00:00Z"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{backend}: {r:?}");
        // Airflow 3: logical_date may be null (now).
        let r = api
            .post(
                "/api/v2/dags/hourly_etl/dagRuns",
                json!({"logical_date": null}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        assert!(r.body["dag_run_id"]
            .as_str()
            .unwrap()
            .starts_with("manual__"));
        let r = api
            .post(
                "/api/v2/dags/hourly_etl/dagRuns",
                json!({"dag_run_id": "old", "logical_date": "2024-01-01T00:00:00+00:00"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        let r = api
            .post(
                "/api/v2/dags/manual_report/dagRuns",
                json!({"dag_run_id": "m1"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");

        // Bad bodies: 422 naming the field; unknown DAG: 404.
        let r = api
            .post("/api/v2/dags/hourly_etl/dagRuns", json!({"conf": [1, 2]}))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(r.body["detail"][0]["loc"], json!(["body", "conf"]), "{r:?}");
        let r = api
            .post(
                "/api/v2/dags/hourly_etl/dagRuns",
                json!({"logical_date": "tomorrow"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(
            r.body["detail"][0]["loc"],
            json!(["body", "logical_date"]),
            "{r:?}"
        );
        for bad in ["", "../../escape", "a/b", "..", "spaced id"] {
            let r = api
                .post(
                    "/api/v2/dags/hourly_etl/dagRuns",
                    json!({"dag_run_id": bad}),
                )
                .await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {r:?}");
            assert_eq!(
                r.body["detail"][0]["loc"],
                json!(["body", "dag_run_id"]),
                "{r:?}"
            );
        }
        let r = api.post("/api/v2/dags/nope/dagRuns", json!({})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
        assert!(r.detail().contains("nope"), "{r:?}");

        // Listing, filters, pagination, ordering.
        let runs = api.ok("/api/v2/dags/hourly_etl/dagRuns").await;
        assert_eq!(runs["total_entries"], 3, "{runs}");
        let runs = api
            .ok("/api/v2/dags/~/dagRuns?order_by=-logical_date&limit=10")
            .await;
        assert_eq!(runs["total_entries"], 4, "{runs}");
        let runs = api
            .ok("/api/v2/dags/hourly_etl/dagRuns?logical_date_gte=2024-02-01T00:00:00.000000%2B0000&logical_date_lte=2024-06-01T00:00:00Z")
            .await;
        assert_eq!(ids(&runs, "dag_runs", "dag_run_id"), ["run_one"], "{runs}");
        let runs = api
            .ok("/api/v2/dags/hourly_etl/dagRuns?order_by=logical_date&limit=1&offset=1")
            .await;
        assert_eq!(ids(&runs, "dag_runs", "dag_run_id"), ["run_one"], "{runs}");
        assert_eq!(runs["total_entries"], 3);
        let runs = api
            .ok("/api/v2/dags/~/dagRuns?state=queued&state=running&run_id_pattern=m1")
            .await;
        assert_eq!(ids(&runs, "dag_runs", "dag_run_id"), ["m1"], "{runs}");
        let runs = api.ok("/api/v2/dags/~/dagRuns?state=success").await;
        assert_eq!(runs["total_entries"], 0);
        let runs = api
            .ok("/api/v2/dags/~/dagRuns?start_date_gte=2020-01-01")
            .await;
        assert_eq!(runs["total_entries"], 0, "queued runs have no start date");
        let r = api
            .get("/api/v2/dags/hourly_etl/dagRuns?state=sleepy")
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(r.body["detail"][0]["loc"], json!(["query", "state"]));
        let r = api
            .get("/api/v2/dags/hourly_etl/dagRuns?end_date_lte=someday")
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(r.body["detail"][0]["loc"], json!(["query", "end_date_lte"]));
        let r = api.get("/api/v2/dags/nope/dagRuns").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");

        // Get, note, mark, delete.
        let one = api.ok("/api/v2/dags/hourly_etl/dagRuns/run_one").await;
        assert_eq!(one["conf"]["rows"], 5);
        let r = api.get("/api/v2/dags/hourly_etl/dagRuns/nope").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(
            r.detail().contains("nope") && r.detail().contains("hourly_etl"),
            "{r:?}"
        );
        let r = api
            .patch(
                "/api/v2/dags/hourly_etl/dagRuns/run_one",
                json!({"note": "changed"}),
            )
            .await;
        assert_eq!(r.body["note"], "changed", "{r:?}");
        let r = api
            .patch(
                "/api/v2/dags/hourly_etl/dagRuns/run_one",
                json!({"state": "running"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        let r = api
            .patch(
                "/api/v2/dags/hourly_etl/dagRuns/old",
                json!({"state": "failed"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["state"], "failed");
        assert!(r.body["end_date"].is_string());
        let r = api.delete("/api/v2/dags/hourly_etl/dagRuns/old").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
        let r = api.get("/api/v2/dags/hourly_etl/dagRuns/old").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        api.stop().await;
    }
}

const FLOW: &str = r#"
[dag]
id = "flow"
schedule = "None"
[tasks.extract]
kind = "shell"
command = "echo 'extracting'; echo '{\"n\": 3, \"conf\": {{ dag_run.conf | tojson }}}'"
[tasks.big]
kind = "shell"
upstream = ["extract"]
command = "printf '\"%0200d\"\n' 0"
[tasks.check]
kind = "shell"
upstream = ["extract"]
command = "echo checking for MARKER; test -e MARKER"
[tasks.report]
kind = "noop"
upstream = ["check"]
"#;

fn ti<'a>(list: &'a Value, task: &str) -> &'a Value {
    list["task_instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == task)
        .unwrap_or_else(|| panic!("no task instance {task} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_and_patch_rerun_tasks_and_serve_logs_and_xcoms() {
    for (backend, mut api) in both().await {
        let marker = api.home().join("marker");
        api.write_dag(
            "flow.toml",
            &FLOW.replace("MARKER", &marker.display().to_string()),
        );
        api.start_scheduler(64);
        api.wait_for("/api/v2/dags", Duration::from_secs(30), |b| {
            b["total_entries"] == 1
        })
        .await;

        let r = api
            .post(
                "/api/v2/dags/flow/dagRuns",
                json!({"dag_run_id": "r1", "conf": {"k": "v"}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        let run = api
            .wait_for(
                "/api/v2/dags/flow/dagRuns/r1",
                Duration::from_secs(60),
                |r| r["state"] == "failed",
            )
            .await;
        assert!(run["duration"].as_f64().is_some(), "{run}");
        let tis = api.ok("/api/v2/dags/flow/dagRuns/r1/taskInstances").await;
        assert_eq!(tis["total_entries"], 4, "{tis}");
        assert_eq!(ti(&tis, "extract")["state"], "success");
        assert_eq!(ti(&tis, "check")["state"], "failed");
        assert_eq!(ti(&tis, "report")["state"], "upstream_failed");
        assert_eq!(ti(&tis, "check")["try_number"], 1);
        assert_eq!(ti(&tis, "check")["operator"], "shell");
        assert!(ti(&tis, "extract")["duration"].as_f64().is_some());
        let failed = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances?state=failed&state=upstream_failed")
            .await;
        assert_eq!(failed["total_entries"], 2, "{failed}");
        let every = api
            .ok("/api/v2/dags/~/dagRuns/~/taskInstances?order_by=-task_id&limit=2")
            .await;
        assert_eq!(every["total_entries"], 4, "{every}");
        assert_eq!(
            ids(&every, "task_instances", "task_id"),
            ["report", "extract"],
            "{every}"
        );
        let page = api
            .ok("/api/v2/dags/flow/dagRuns/~/taskInstances?task_id=check")
            .await;
        assert_eq!(page["task_instances"][0]["dag_run_id"], "r1", "{page}");
        let r = api
            .get("/api/v2/dags/flow/dagRuns/r1/taskInstances?state=lost")
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(r.body["detail"][0]["loc"], json!(["query", "state"]));
        let r = api
            .get("/api/v2/dags/flow/dagRuns/nope/taskInstances")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
        let one = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/extract")
            .await;
        assert_eq!(one["state"], "success");
        assert_eq!(one["map_index"], -1);
        let r = api
            .get("/api/v2/dags/flow/dagRuns/r1/taskInstances/nope")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
        let r = api
            .get("/api/v2/dags/flow/dagRuns/r1/taskInstances/extract/3")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");

        // XComs: inline, and spilled to the artifact store.
        let xs = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/extract/xcomEntries")
            .await;
        assert_eq!(xs["total_entries"], 1, "{xs}");
        assert_eq!(xs["xcom_entries"][0]["key"], "return_value");
        let x = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/extract/xcomEntries/return_value")
            .await;
        assert_eq!(x["value"], json!({"n": 3, "conf": {"k": "v"}}), "{x}");
        let x = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/big/xcomEntries/return_value")
            .await;
        assert_eq!(x["value"], json!("0".repeat(200)), "{x}");
        let x = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/extract/xcomEntries/return_value?stringify=true")
            .await;
        assert!(x["value"].as_str().unwrap().contains("\"n\":3"), "{x}");
        let all = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/~/xcomEntries")
            .await;
        assert_eq!(all["total_entries"], 2, "{all}");
        let r = api
            .get("/api/v2/dags/flow/dagRuns/r1/taskInstances/extract/xcomEntries/other")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");

        // Logs: JSON lines by default, text when asked, a continuation token.
        let log = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/check/logs/1")
            .await;
        let events: Vec<&str> = log["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["event"].as_str().unwrap())
            .collect();
        assert!(events.iter().any(|e| e.contains("checking for")), "{log}");
        assert!(log["content"][0]["timestamp"].is_string(), "{log}");
        let token = log["continuation_token"].as_str().unwrap().to_string();
        let more = api
            .ok(&format!(
                "/api/v2/dags/flow/dagRuns/r1/taskInstances/check/logs/1?token={token}"
            ))
            .await;
        assert_eq!(
            more["content"],
            json!([]),
            "nothing new after the token: {more}"
        );
        let full = api
            .ok(&format!("/api/v2/dags/flow/dagRuns/r1/taskInstances/check/logs/1?token={token}&full_content=true"))
            .await;
        assert_eq!(full["content"], log["content"]);
        let text = into_resp(
            api.client
                .get(format!(
                    "{}/api/v2/dags/flow/dagRuns/r1/taskInstances/check/logs/1",
                    api.base
                ))
                .bearer_auth(&api.admin)
                .header("Accept", "text/plain")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(text.status, StatusCode::OK);
        assert!(
            text.content_type.starts_with("text/plain"),
            "{}",
            text.content_type
        );
        assert!(
            text.text.contains("checking for") && text.text.contains("] INFO"),
            "{}",
            text.text
        );
        let r = api
            .get("/api/v2/dags/flow/dagRuns/r1/taskInstances/check/logs/2")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
        let r = api
            .get("/api/v2/dags/flow/dagRuns/r1/taskInstances/check/logs/x")
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");

        // Clear: a dry run by default changes nothing.
        let dry = api
            .post(
                "/api/v2/dags/flow/clearTaskInstances",
                json!({"dag_run_id": "r1", "task_ids": ["check"], "include_downstream": true}),
            )
            .await;
        assert_eq!(dry.status, StatusCode::OK, "{dry:?}");
        assert_eq!(dry.body["total_entries"], 2, "{dry:?}");
        assert_eq!(
            api.ok("/api/v2/dags/flow/dagRuns/r1").await["state"],
            "failed"
        );

        // Now really: check runs again (and succeeds: the marker exists), then report.
        std::fs::write(&marker, "").unwrap();
        let r = api
            .post(
                "/api/v2/dags/flow/clearTaskInstances",
                json!({"dag_run_id": "r1", "task_ids": ["check"], "include_downstream": true, "dry_run": false, "only_failed": false}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let cleared: Vec<String> = ids(&r.body, "task_instances", "task_id");
        assert_eq!(cleared.len(), 2, "{:?}", r);
        assert!(cleared.contains(&"check".to_string()) && cleared.contains(&"report".to_string()));
        api.wait_for(
            "/api/v2/dags/flow/dagRuns/r1",
            Duration::from_secs(60),
            |r| r["state"] == "success",
        )
        .await;
        let tis = api.ok("/api/v2/dags/flow/dagRuns/r1/taskInstances").await;
        assert_eq!(ti(&tis, "check")["state"], "success", "{tis}");
        assert_eq!(ti(&tis, "check")["try_number"], 2, "{tis}");
        assert_eq!(
            ti(&tis, "check")["max_tries"],
            1,
            "a new try was allowed: {tis}"
        );
        assert_eq!(ti(&tis, "report")["state"], "success");
        assert_eq!(
            ti(&tis, "extract")["try_number"],
            1,
            "extract was not cleared"
        );
        let tries = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/check/tries")
            .await;
        assert_eq!(tries["total_entries"], 2, "the old try is kept: {tries}");
        assert_eq!(tries["task_instances"][0]["state"], "failed");
        assert_eq!(tries["task_instances"][1]["state"], "success");
        let t1 = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/check/tries/1")
            .await;
        assert_eq!(t1["try_number"], 1);
        let log2 = api
            .ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/check/logs/2")
            .await;
        assert!(log2["content"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["event"].as_str().unwrap().contains("checking")));

        // PATCH a task instance: dry run first, then for real; the run follows.
        let r = api
            .patch(
                "/api/v2/dags/flow/dagRuns/r1/taskInstances/report/dry_run",
                json!({"new_state": "failed"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(ids(&r.body, "task_instances", "task_id"), ["report"]);
        assert_eq!(
            api.ok("/api/v2/dags/flow/dagRuns/r1/taskInstances/report")
                .await["state"],
            "success"
        );
        let r = api
            .patch(
                "/api/v2/dags/flow/dagRuns/r1/taskInstances/report",
                json!({"new_state": "running"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(r.body["detail"][0]["loc"], json!(["body", "new_state"]));
        let r = api
            .patch(
                "/api/v2/dags/flow/dagRuns/r1/taskInstances/report",
                json!({"new_state": "failed"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["task_instances"][0]["state"], "failed");
        assert_eq!(
            api.ok("/api/v2/dags/flow/dagRuns/r1").await["state"],
            "failed"
        );

        // Clearing the whole run through the run's own endpoint re-runs everything.
        let r = api
            .post(
                "/api/v2/dags/flow/dagRuns/r1/clear",
                json!({"dry_run": false}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["dag_run_id"], "r1");
        let run = api
            .wait_for(
                "/api/v2/dags/flow/dagRuns/r1",
                Duration::from_secs(60),
                |r| r["state"] == "success",
            )
            .await;
        assert_eq!(run["state"], "success");
        let tis = api.ok("/api/v2/dags/flow/dagRuns/r1/taskInstances").await;
        assert_eq!(ti(&tis, "extract")["try_number"], 2, "{tis}");
        assert_eq!(ti(&tis, "report")["state"], "success");
        api.stop().await;
    }
}

#[tokio::test]
async fn variables_pools_import_errors_and_backfill() {
    for (backend, api) in both().await {
        // Variables.
        let r = api
            .post(
                "/api/v2/variables",
                json!({"key": "k1", "value": "v1", "description": "first"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{backend}: {r:?}");
        assert_eq!(r.body["value"], "v1");
        let r = api
            .post("/api/v2/variables", json!({"key": "k1", "value": "again"}))
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
        let r = api
            .post("/api/v2/variables", json!({"key": "k2", "value": {"a": 1}}))
            .await;
        assert_eq!(r.body["value"], "{\"a\":1}", "{r:?}");
        // A variable whose key says it is secret is kept, but never shown, as in
        // Airflow: masked when created, read and listed.
        let r = api
            .post(
                "/api/v2/variables",
                json!({"key": "db_password", "value": "hunter2-var"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        assert_eq!(r.body["value"], "***", "{r:?}");
        assert_eq!(
            api.ok("/api/v2/variables/db_password").await["value"],
            "***"
        );
        let all = api.ok("/api/v2/variables").await;
        assert!(!all.to_string().contains("hunter2-var"), "{all}");
        // Its GET body, edited and sent back, keeps the stored value.
        let r = api
            .patch(
                "/api/v2/variables/db_password",
                json!({"key": "db_password", "value": "***", "description": "edited"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["description"], "edited");
        let stored = api.store.variables().await.unwrap();
        let kept = stored
            .iter()
            .find(|v| v.key == "db_password")
            .expect("kept");
        assert_eq!(kept.value, "hunter2-var", "{backend}");
        assert_eq!(
            api.delete("/api/v2/variables/db_password").await.status,
            StatusCode::NO_CONTENT
        );
        let r = api.post("/api/v2/variables", json!({"value": "x"})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.body["detail"][0]["loc"], json!(["body", "key"]), "{r:?}");
        let list = api.ok("/api/v2/variables?limit=1").await;
        assert_eq!(list["total_entries"], 2);
        assert_eq!(ids(&list, "variables", "key"), ["k1"]);
        let r = api
            .patch(
                "/api/v2/variables/k1?update_mask=value",
                json!({"key": "k1", "value": "v2"}),
            )
            .await;
        assert_eq!(r.body["value"], "v2", "{r:?}");
        assert_eq!(r.body["description"], "first");
        assert_eq!(api.ok("/api/v2/variables/k1").await["value"], "v2");
        assert_eq!(
            api.delete("/api/v2/variables/k1").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            api.get("/api/v2/variables/k1").await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            api.delete("/api/v2/variables/k1").await.status,
            StatusCode::NOT_FOUND
        );

        // Pools.
        let r = api
            .post(
                "/api/v2/pools",
                json!({"name": "db", "slots": 2, "description": "database"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        assert_eq!(r.body["open_slots"], 2);
        let r = api
            .post("/api/v2/pools", json!({"name": "db", "slots": 2}))
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
        let r = api
            .post("/api/v2/pools", json!({"name": "neg", "slots": -3}))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        let pools = api.ok("/api/v2/pools").await;
        assert_eq!(ids(&pools, "pools", "name"), ["db", "default_pool"]);
        let r = api.patch("/api/v2/pools/db", json!({"slots": 5})).await;
        assert_eq!(r.body["slots"], 5, "{r:?}");
        assert_eq!(r.body["description"], "database");
        assert_eq!(
            api.delete("/api/v2/pools/default_pool").await.status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            api.delete("/api/v2/pools/db").await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            api.get("/api/v2/pools/db").await.status,
            StatusCode::NOT_FOUND
        );

        // Import errors.
        let diag: sluice_core::Diagnostic = serde_json::from_value(json!({
            "path": "/dags/bad.toml", "line": 3, "col": 7, "message": "unknown key `shedule`"
        }))
        .unwrap();
        let mut errors = std::collections::BTreeMap::new();
        errors.insert("/dags/bad.toml".to_string(), vec![diag]);
        api.store.set_import_errors(&errors).await.unwrap();
        let list = api.ok("/api/v2/importErrors").await;
        assert_eq!(list["total_entries"], 1, "{list}");
        let e = &list["import_errors"][0];
        assert_eq!(e["filename"], "/dags/bad.toml");
        assert_eq!(
            e["stack_trace"],
            "/dags/bad.toml:3:7: unknown key `shedule`"
        );
        let one = api
            .ok(&format!("/api/v2/importErrors/{}", e["import_error_id"]))
            .await;
        assert_eq!(one["filename"], "/dags/bad.toml");
        assert_eq!(
            api.get("/api/v2/importErrors/12345").await.status,
            StatusCode::NOT_FOUND
        );

        // Backfill: one run per hourly interval, existing ones left alone.
        api.add_dag(HOURLY).await;
        api.add_dag(MANUAL).await;
        let body = json!({"dag_id": "hourly_etl", "from_date": "2024-02-01T00:00:00Z", "to_date": "2024-02-01T02:00:00Z", "dag_run_conf": {"x": 1}});
        let r = api.post("/api/v2/backfills", body.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        assert_eq!(
            r.body["queued_run_ids"].as_array().unwrap().len(),
            3,
            "{r:?}"
        );
        let runs = api
            .ok("/api/v2/dags/hourly_etl/dagRuns?run_type=backfill")
            .await;
        assert_eq!(runs["total_entries"], 3, "{runs}");
        assert_eq!(runs["dag_runs"][0]["conf"], json!({"x": 1}));
        let r = api.post("/api/v2/backfills", body).await;
        assert_eq!(r.body["existing_runs"], 3, "{r:?}");
        let r = api
            .post("/api/v2/backfills", json!({"dag_id": "manual_report", "from_date": "2024-02-01T00:00:00Z", "to_date": "2024-02-02T00:00:00Z"}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
        let r = api
            .post(
                "/api/v2/backfills",
                json!({"dag_id": "hourly_etl", "from_date": "2024-02-01T00:00:00Z"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
        assert_eq!(
            r.body["detail"][0]["loc"],
            json!(["body", "to_date"]),
            "{r:?}"
        );
        api.stop().await;
    }
}

#[tokio::test]
async fn openapi_json_parses_and_lists_the_paths() {
    let mut apis = both().await;
    let (_, api) = apis.remove(0);
    for (_, other) in apis {
        other.stop().await;
    }
    let spec = api.ok("/api/v2/openapi.json").await;
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3."),
        "{spec}"
    );
    let paths = spec["paths"].as_object().unwrap();
    for p in [
        "/auth/token",
        "/api/v2/monitor/health",
        "/api/v2/version",
        "/api/v2/dags",
        "/api/v2/dags/{dag_id}",
        "/api/v2/dags/{dag_id}/details",
        "/api/v2/dags/{dag_id}/dagRuns",
        "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}",
        "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/clear",
        "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances",
        "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}",
        "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/{map_index}",
        "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/tries",
        "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/{try_number}",
        "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries",
        "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/{xcom_key}",
        "/api/v2/dags/{dag_id}/clearTaskInstances",
        "/api/v2/variables",
        "/api/v2/variables/{variable_key}",
        "/api/v2/connections",
        "/api/v2/connections/{connection_id}",
        "/api/v2/pools",
        "/api/v2/pools/{pool_name}",
        "/api/v2/importErrors",
        "/api/v2/backfills",
    ] {
        assert!(
            paths.contains_key(p),
            "openapi.json lacks {p}; it has {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    assert!(paths["/api/v2/dags/{dag_id}/dagRuns"]["post"].is_object());
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    for s in [
        "DAGResponse",
        "DAGRunResponse",
        "TaskInstanceResponse",
        "TriggerDAGRunPostBody",
    ] {
        assert!(schemas.contains_key(s), "no schema {s}");
    }
    // The document served is the one the library builds.
    assert_eq!(spec, serde_json::to_value(sluice_web::openapi()).unwrap());
    api.stop().await;
}

const MAPPED: &str = r#"
[dag]
id = "fan"
schedule = "None"
[tasks.each]
kind = "shell"
map_over = [1, 2, 3]
command = "echo item {{ item }}; echo {{ item * 10 }}"
[tasks.done]
kind = "noop"
upstream = ["each"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_task_instances_by_map_index() {
    for (backend, mut api) in both().await {
        api.write_dag("fan.toml", MAPPED);
        api.start_scheduler(64 * 1024);
        api.wait_for("/api/v2/dags", Duration::from_secs(30), |b| {
            b["total_entries"] == 1
        })
        .await;
        let r = api
            .post("/api/v2/dags/fan/dagRuns", json!({"dag_run_id": "m"}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        api.wait_for("/api/v2/dags/fan/dagRuns/m", Duration::from_secs(60), |r| {
            r["state"] == "success"
        })
        .await;
        let each = api
            .ok("/api/v2/dags/fan/dagRuns/m/taskInstances?task_id=each&order_by=map_index")
            .await;
        assert_eq!(each["total_entries"], 3, "{backend}: {each}");
        let indexes: Vec<i64> = each["task_instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["map_index"].as_i64().unwrap())
            .collect();
        assert_eq!(indexes, [0, 1, 2]);
        let one = api
            .ok("/api/v2/dags/fan/dagRuns/m/taskInstances/each/1")
            .await;
        assert_eq!(
            (one["map_index"].clone(), one["state"].clone()),
            (json!(1), json!("success"))
        );
        let r = api
            .get("/api/v2/dags/fan/dagRuns/m/taskInstances/each")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");
        assert!(r.detail().contains("mapped"), "{r:?}");
        let x = api.ok("/api/v2/dags/fan/dagRuns/m/taskInstances/each/xcomEntries/return_value?map_index=2").await;
        assert_eq!(x["value"], 30, "{x}");
        let log = api
            .ok("/api/v2/dags/fan/dagRuns/m/taskInstances/each/logs/1?map_index=1")
            .await;
        assert!(
            log["content"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["event"] == "item 2"),
            "{log}"
        );

        // Mark one mapped instance failed: `done` already ran and is the leaf, so the
        // re-evaluated run stays successful.
        let r = api
            .patch(
                "/api/v2/dags/fan/dagRuns/m/taskInstances/each/1",
                json!({"new_state": "failed"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(ids(&r.body, "task_instances", "task_id"), ["each"]);
        assert_eq!(r.body["task_instances"][0]["map_index"], 1);
        assert_eq!(
            api.ok("/api/v2/dags/fan/dagRuns/m").await["state"],
            "success"
        );
        // Clear just that instance and what follows it: it runs again, alone.
        let r = api
            .post(
                "/api/v2/dags/fan/clearTaskInstances",
                json!({"dag_run_id": "m", "task_ids": [["each", 1]], "include_downstream": true, "only_failed": false, "dry_run": false}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["total_entries"], 2, "each[1] and done: {r:?}");
        api.wait_for("/api/v2/dags/fan/dagRuns/m", Duration::from_secs(60), |r| {
            r["state"] == "success"
        })
        .await;
        let each = api
            .ok("/api/v2/dags/fan/dagRuns/m/taskInstances?task_id=each&order_by=map_index")
            .await;
        let tries: Vec<i64> = each["task_instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["try_number"].as_i64().unwrap())
            .collect();
        assert_eq!(tries, [1, 2, 1], "{each}");
        api.stop().await;
    }
}

const PASSWORD: &str = "Pa55/w0rd@secret";

#[tokio::test]
async fn connections_are_stored_encrypted_and_never_show_a_password() {
    for (backend, api) in both().await {
        let body = json!({
            "connection_id": "warehouse",
            "conn_type": "postgres",
            "description": "the warehouse",
            "host": "db.example.com",
            "login": "etl",
            "schema": "analytics",
            "port": 5432,
            "password": PASSWORD,
            "extra": "{\"sslmode\": \"require\", \"api_token\": \"tok-123456\"}"
        });
        let r = api.post("/api/v2/connections", body.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{backend}: {r:?}");
        assert_eq!(r.body["password"], "***", "{backend}: {r:?}");
        assert!(
            !r.text.contains(PASSWORD) && !r.text.contains("tok-123456"),
            "{r:?}"
        );
        // Also one without a password.
        let r = api
            .post(
                "/api/v2/connections",
                json!({"connection_id": "cache", "conn_type": "redis", "host": "cache", "port": 6379}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{backend}: {r:?}");
        assert_eq!(r.body["password"], Value::Null, "{r:?}");

        let list = api.get("/api/v2/connections").await;
        assert_eq!(list.status, StatusCode::OK, "{backend}: {list:?}");
        assert_eq!(list.body["total_entries"], 2, "{list:?}");
        assert_eq!(
            ids(&list.body, "connections", "connection_id"),
            ["cache", "warehouse"]
        );
        assert!(!list.text.contains(PASSWORD), "{backend}: {list:?}");
        let desc = api
            .ok("/api/v2/connections?order_by=-connection_id&limit=1")
            .await;
        assert_eq!(ids(&desc, "connections", "connection_id"), ["warehouse"]);

        let one = api.get("/api/v2/connections/warehouse").await;
        assert_eq!(one.status, StatusCode::OK, "{backend}: {one:?}");
        assert!(!one.text.contains(PASSWORD), "{backend}: {one:?}");
        let c = &one.body;
        assert_eq!(
            (
                c["conn_type"].clone(),
                c["host"].clone(),
                c["port"].clone(),
                c["login"].clone(),
                c["schema"].clone(),
                c["password"].clone(),
                c["description"].clone()
            ),
            (
                json!("postgres"),
                json!("db.example.com"),
                json!(5432),
                json!("etl"),
                json!("analytics"),
                json!("***"),
                json!("the warehouse")
            ),
            "{backend}: {c}"
        );
        let extra: Value = serde_json::from_str(c["extra"].as_str().unwrap()).unwrap();
        assert_eq!(
            extra,
            json!({"sslmode": "require", "api_token": "***"}),
            "{backend}"
        );

        // The store holds the URI encrypted; the key reads it back.
        let stored = api.store.stored_connections().await.unwrap();
        let row = stored.iter().find(|s| s.conn_id == "warehouse").unwrap();
        assert!(!row.uri_encrypted.contains(PASSWORD) && !row.uri_encrypted.contains("Pa55"));
        let stored_password = |api: &common::TestApi, rows: &[sluice_store::StoredConnection]| {
            let row = rows.iter().find(|s| s.conn_id == "warehouse").unwrap();
            let uri = api.vault().decrypt(&row.uri_encrypted).unwrap();
            sluice_tasks::Connection::parse("warehouse", &uri).unwrap()
        };
        let parsed = stored_password(&api, &stored);
        assert_eq!(parsed.password.as_deref(), Some(PASSWORD), "{backend}");
        assert_eq!(
            parsed.extra.get("api_token").map(String::as_str),
            Some("tok-123456")
        );

        // PATCH with the masked password (as a GET showed it) keeps the password.
        let mut patch = c.clone();
        patch["host"] = json!("db2.example.com");
        let r = api.patch("/api/v2/connections/warehouse", patch).await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        assert_eq!(
            (r.body["host"].clone(), r.body["password"].clone()),
            (json!("db2.example.com"), json!("***"))
        );
        let parsed = stored_password(&api, &api.store.stored_connections().await.unwrap());
        assert_eq!(parsed.password.as_deref(), Some(PASSWORD), "{backend}");
        assert_eq!(parsed.host.as_deref(), Some("db2.example.com"));
        assert_eq!(
            parsed.extra.get("api_token").map(String::as_str),
            Some("tok-123456")
        );
        // update_mask: only the password changes.
        let r = api
            .patch(
                "/api/v2/connections/warehouse?update_mask=password",
                json!({"connection_id": "warehouse", "conn_type": "x", "password": "n3w-pass"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        assert_eq!(r.body["conn_type"], "postgres", "{r:?}");
        let parsed = stored_password(&api, &api.store.stored_connections().await.unwrap());
        assert_eq!(parsed.password.as_deref(), Some("n3w-pass"), "{backend}");
        assert_eq!(parsed.host.as_deref(), Some("db2.example.com"));

        // Duplicates, unknown ids, viewers.
        let r = api.post("/api/v2/connections", body.clone()).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{backend}: {r:?}");
        let r = api.get("/api/v2/connections/nope").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{backend}: {r:?}");
        let r = api
            .patch(
                "/api/v2/connections/nope",
                json!({"connection_id": "nope", "conn_type": "http"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{backend}: {r:?}");
        let r = api.delete("/api/v2/connections/nope").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{backend}: {r:?}");
        let mut other = body.clone();
        other["connection_id"] = json!("viewer_made");
        let r = api
            .send(
                Method::POST,
                "/api/v2/connections",
                Some(&api.viewer.clone()),
                Some(other),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{backend}: {r:?}");
        let r = api
            .send(
                Method::DELETE,
                "/api/v2/connections/cache",
                Some(&api.viewer.clone()),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{backend}: {r:?}");
        let r = api
            .send(
                Method::GET,
                "/api/v2/connections/cache",
                Some(&api.viewer.clone()),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        let r = api
            .post(
                "/api/v2/connections",
                json!({"connection_id": "bad id", "conn_type": "http"}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{backend}: {r:?}"
        );

        let r = api.delete("/api/v2/connections/cache").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{backend}: {r:?}");
        assert_eq!(api.ok("/api/v2/connections").await["total_entries"], 1);
        api.stop().await;
    }
}

#[tokio::test]
async fn connections_without_a_key_fail_clearly() {
    for (backend, api) in both_without_key().await {
        let r = api
            .post(
                "/api/v2/connections",
                json!({"connection_id": "c", "conn_type": "http", "host": "h", "password": "pw123456"}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{backend}: {r:?}"
        );
        assert!(r.detail().contains("SLUICE_FERNET_KEY"), "{backend}: {r:?}");
        // A connection stored with a key this API does not have is listed, unreadable.
        let vault = sluice_tasks::Vault::new(&sluice_tasks::Vault::generate_key()).unwrap();
        api.store
            .put_connection("old", "http", None, &vault.encrypt("http://u:pw123456@h"))
            .await
            .unwrap();
        let r = api
            .patch(
                "/api/v2/connections/old",
                json!({"connection_id": "old", "conn_type": "http"}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{backend}: {r:?}"
        );
        assert!(r.detail().contains("SLUICE_FERNET_KEY"), "{backend}: {r:?}");
        let list = api.get("/api/v2/connections").await;
        assert_eq!(list.body["total_entries"], 1, "{backend}: {list:?}");
        assert!(!list.text.contains("pw123456"), "{list:?}");
        api.stop().await;
    }
}

const LEAKY: &str = r#"
[dag]
id = "leaky"
schedule = "None"
[tasks.leak]
kind = "shell"
command = "echo '{\"token\": \"xcom-s3cret-value\", \"dsn\": \"postgres://u:conn-pa55word@db/x\", \"n\": 1}'"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xcom_values_never_show_a_secret() {
    for (backend, mut api) in both().await {
        api.write_dag("leaky.toml", LEAKY);
        api.start_scheduler(4096);
        api.wait_for("/api/v2/dags", Duration::from_secs(30), |b| {
            b["total_entries"] == 1
        })
        .await;
        let r = api
            .post("/api/v2/dags/leaky/dagRuns", json!({"dag_run_id": "r1"}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        api.wait_for(
            "/api/v2/dags/leaky/dagRuns/r1",
            Duration::from_secs(60),
            |r| r["state"] == "success",
        )
        .await;
        let path = "/api/v2/dags/leaky/dagRuns/r1/taskInstances/leak/xcomEntries/return_value";
        let x = api.ok(path).await;
        assert_eq!(x["value"]["token"], "xcom-s3cret-value", "{backend}: {x}");
        // Once they are known secrets, the values are masked.
        let secret = api.vault().encrypt("xcom-s3cret-value");
        api.store
            .put_secret("api_token", &secret, None)
            .await
            .unwrap();
        let r = api
            .post(
                "/api/v2/connections",
                json!({"connection_id": "db", "conn_type": "postgres", "host": "db", "login": "u",
                       "password": "conn-pa55word"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{backend}: {r:?}");
        let r = api.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{backend}: {r:?}");
        assert!(
            !r.text.contains("xcom-s3cret-value") && !r.text.contains("conn-pa55word"),
            "{backend}: {r:?}"
        );
        assert_eq!(
            r.body["value"],
            json!({"token": "***", "dsn": "postgres://u:***@db/x", "n": 1}),
            "{backend}: {r:?}"
        );
        let r = api.get(&format!("{path}?stringify=true")).await;
        assert!(!r.text.contains("xcom-s3cret-value"), "{backend}: {r:?}");
        assert!(r.body["value"].as_str().unwrap().contains("***"), "{r:?}");
        api.stop().await;
    }
}
