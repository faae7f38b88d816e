//! `sluice tasks states` shows each task instance of a run with the records and bytes
//! its try read and wrote.

mod common;

use std::path::Path;

use common::Sandbox;

use serde_json::json;
use sluice::local_run::run_to_completion;
use sluice_core::loader::parse_dag;
use sluice_store::{now, NewRun, Store};
use sluice_tasks::Registry;

#[tokio::test]
async fn tasks_states_reports_records_and_bytes_per_task() {
    let home = Sandbox::new();
    let csv = home.path().join("titles.csv");
    std::fs::write(&csv, "title,country\nAlpha,KR\nBeta,US\nGamma,KR\n").expect("csv");
    let src = format!(
        "[dag]\nid = \"catalog\"\n[tasks.read]\nkind = \"csv\"\npath = \"{}\"\n[tasks.count]\nkind = \"shell\"\nupstream = [\"read\"]\ncommand = \"echo {{{{ xcom.read | length }}}}\"\n",
        csv.display()
    );
    let registry = Registry::builtin();
    let dag = parse_dag(&src, Path::new("catalog.toml"), &registry).expect("valid DAG");
    let url = home.sqlite_url();
    let store = Store::connect(&url).await.expect("store");
    store.migrate().await.expect("migrate");
    let cfg = sluice::config::Config {
        home: home.path().to_path_buf(),
        database_url: Some(url.clone()),
        ..Default::default()
    };
    let run = run_to_completion(
        &store,
        &registry,
        sluice::executor_config(&cfg).expect("config"),
        &dag,
        NewRun::manual("catalog", now(), None, json!({})),
    )
    .await
    .expect("run");
    store.close().await;

    let out = home
        .command(&["tasks", "states", "catalog", &run.run_id, "--json"])
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["state"], "success");
    let read = v["task_instances"]
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["task_id"] == "read")
        .expect("read")
        .clone();
    assert_eq!(read["state"], "success");
    assert_eq!(read["records_in"], 3, "{read}");
    assert!(read["bytes_in"].as_i64().unwrap_or(0) > 0, "{read}");

    // The table form names the columns a user scans for.
    let out = home
        .command(&["tasks", "states", "catalog", &run.run_id])
        .output()
        .expect("run sluice");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("records in") && text.contains("read") && text.contains("success"),
        "{text}"
    );
    // An unknown run is a clear error.
    let out = home
        .command(&["tasks", "states", "catalog", "nope"])
        .output()
        .expect("run sluice");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no run nope"));
}
