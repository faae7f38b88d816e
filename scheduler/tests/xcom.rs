//! XCom through the executor, on both backends: values pass between tasks through
//! templates, and large values spill to the artifact store transparently.

use std::path::Path;

use serde_json::json;
use sluice::executor::ExecutorConfig;
use sluice::local_run::run_to_completion;
use sluice_core::loader::parse_dag;
use sluice_store::testing::TestDb;
use sluice_store::{now, NewRun, XcomValue};
use sluice_tasks::Registry;

fn exec_cfg(home: &Path, inline_max: usize) -> ExecutorConfig {
    ExecutorConfig {
        connections: Default::default(),
        secrets: Default::default(),
        vault: None,
        parallelism: 4,
        logs_dir: home.join("logs"),
        artifacts_dir: home.join("artifacts"),
        xcom_inline_max_bytes: inline_max,
        heartbeat_interval: std::time::Duration::from_millis(200),
        shutdown_grace: std::time::Duration::from_secs(1),
        idle_poll: std::time::Duration::from_millis(100),
    }
}

const DAG: &str = r#"
[dag]
id = "big"

[params]
n = 5000

[tasks.produce]
kind = "shell"
command = "python3 -c 'import json; print(json.dumps({\"items\": list(range({{ params.n }})), \"label\": \"x\" * 100}))'"

[tasks.small]
kind = "shell"
command = "echo 42"

[tasks.consume]
kind = "shell"
upstream = ["produce", "small"]
command = "echo {{ xcom.produce['items'] | length }} {{ xcom.produce['items'][-1] }} {{ xcom.small + 1 }}"
"#;

#[tokio::test]
async fn xcom_inline_and_spilled_read_the_same_way() {
    for (name, db) in TestDb::both().await {
        let home = tempfile::tempdir().expect("tempdir");
        let registry = Registry::builtin();
        let dag = parse_dag(DAG, Path::new("big.toml"), &registry).expect("valid DAG");
        let run = run_to_completion(
            &db.store,
            &registry,
            exec_cfg(home.path(), 1024),
            &dag,
            NewRun::manual("big", now(), None, json!({})),
        )
        .await
        .expect("run");
        let final_run = db.store.run_by_pk(run.id).await.expect("run").expect("row");
        assert_eq!(final_run.state, "success", "{name}");
        let xcoms = db.store.xcoms(run.id, None).await.expect("xcoms");
        let by_task = |t: &str| {
            xcoms
                .iter()
                .find(|x| x.task_id == t)
                .map(|x| x.value.clone())
        };
        assert_eq!(
            by_task("small"),
            Some(XcomValue::Inline("42".into())),
            "{name}"
        );
        match by_task("produce") {
            Some(XcomValue::Artifact { path, size }) => {
                let text = std::fs::read_to_string(home.path().join("artifacts").join(&path))
                    .expect("artifact file");
                assert_eq!(text.len() as i64, size, "{name}");
                assert!(size > 1024, "{name}");
            }
            other => panic!("{name}: produce's XCom should be spilled, got {other:?}"),
        }
        assert_eq!(
            by_task("consume"),
            Some(XcomValue::Inline("\"5000 4999 43\"".into())),
            "{name}"
        );
        // The downstream's log shows the rendered command ran.
        let ti = db
            .store
            .task_instances(run.id)
            .await
            .expect("tis")
            .into_iter()
            .find(|t| t.task_id == "consume")
            .expect("consume");
        let log = home
            .path()
            .join("logs")
            .join(sluice_store::log_path("big", &ti.run_id, "consume", -1, 1));
        let text = std::fs::read_to_string(&log).expect("log file per try");
        assert!(text.contains("stdout: 5000 4999 43"), "{name}: {text}");
        db.cleanup().await;
    }
}
