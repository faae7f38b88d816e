//! Keys a kind renders once per record (`id` of es_index) see the run's context as well
//! as `record`: the executor hands them over unrendered, with the try's context.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::TimeZone;
use serde_json::json;
use sluice::local_run::run_to_completion;
use sluice_core::loader::parse_dag;
use sluice_store::testing::TestDb;
use sluice_store::NewRun;
use sluice_tasks::Registry;

fn opensearch() -> String {
    std::env::var("SLUICE_TEST_OPENSEARCH").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

#[tokio::test]
async fn document_ids_combine_the_record_and_the_logical_date() {
    let db = TestDb::sqlite().await;
    let home = tempfile::tempdir().expect("tmp");
    let es = opensearch();
    let index = format!("per-record-{}", std::process::id());
    let src = format!(
        r#"
[dag]
id = "per_record"

[tasks.games]
kind = "shell"
command = "echo '[{{\"appid\": 730, \"n\": 1}}, {{\"appid\": 570, \"n\": 2}}]'"

[tasks.index]
kind = "es_index"
upstream = ["games"]
index = "{index}"
records = "{{{{ xcom.games }}}}"
id = "{{{{ record.appid }}}}-{{{{ ds_nodash }}}}"
refresh = true
"#
    );
    let registry = Registry::builtin();
    let dag = parse_dag(&src, Path::new("per_record.toml"), &registry).expect("valid DAG");
    let cfg = sluice::config::Config {
        home: home.path().to_path_buf(),
        database_url: Some(db.url.clone()),
        connections: BTreeMap::from([("es_default".to_string(), es.clone())]),
        ..Default::default()
    };
    let logical = chrono::Utc.with_ymd_and_hms(2026, 11, 22, 6, 0, 0).unwrap();
    let run = run_to_completion(
        &db.store,
        &registry,
        sluice::executor_config(&cfg).expect("config"),
        &dag,
        NewRun::manual("per_record", logical, None, json!({})),
    )
    .await
    .expect("run");
    let state = db
        .store
        .run_by_pk(run.id)
        .await
        .expect("run")
        .expect("exists")
        .state;
    assert_eq!(state, "success");
    let http = reqwest::Client::new();
    for (appid, n) in [(730, 1), (570, 2)] {
        let doc: serde_json::Value = http
            .get(format!("{es}/{index}/_doc/{appid}-20261122"))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("json");
        assert_eq!(doc["_source"]["n"], n, "{doc}");
    }
    let _ = http.delete(format!("{es}/{index}")).send().await;
    db.cleanup().await;
}
