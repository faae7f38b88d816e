//! Secrets reach tasks through templates and never appear in task logs or stored errors.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use sluice::executor::ExecutorConfig;
use sluice::local_run::run_to_completion;
use sluice_core::loader::parse_dag;
use sluice_store::testing::TestDb;
use sluice_store::{log_path, now, NewRun};
use sluice_tasks::{Connections, Registry, Secrets};

const DAG: &str = r#"
[dag]
id = "secretive"

[tasks.use_it]
kind = "shell"
env = { TOKEN = "{{ secrets.API_TOKEN }}" }
command = "echo \"calling with $TOKEN\"; printf '{\"len\": %d}\\n' \"$(printf %s \"$TOKEN\" | wc -c)\""

[tasks.leak_it]
kind = "shell"
upstream = ["use_it"]
command = "echo \"bad token {{ secrets.api_token }}\" >&2; exit 1"
"#;

#[tokio::test]
async fn secrets_are_usable_but_masked() {
    let db = TestDb::sqlite().await;
    let home = tempfile::tempdir().expect("tempdir");
    let registry = Registry::builtin();
    let secret = "tok-9f8e7d6c5b4a";
    let cfg = ExecutorConfig {
        connections: Connections::default(),
        secrets: Secrets::load(&BTreeMap::from([(
            "api_token".to_string(),
            secret.to_string(),
        )])),
        vault: None,
        parallelism: 2,
        logs_dir: home.path().join("logs"),
        artifacts_dir: home.path().join("artifacts"),
        xcom_inline_max_bytes: 65536,
        heartbeat_interval: std::time::Duration::from_millis(200),
        shutdown_grace: std::time::Duration::from_secs(1),
        idle_poll: std::time::Duration::from_millis(100),
    };
    let dag = parse_dag(DAG, Path::new("s.toml"), &registry).expect("valid");
    let run = run_to_completion(
        &db.store,
        &registry,
        cfg,
        &dag,
        NewRun::manual("secretive", now(), None, json!({})),
    )
    .await
    .expect("run");
    let tis = db.store.task_instances(run.id).await.expect("tis");
    let use_it = tis.iter().find(|t| t.task_id == "use_it").expect("use_it");
    assert_eq!(use_it.state.as_deref(), Some("success"));
    // The task saw the real value (its length), …
    let xcom = db
        .store
        .xcoms(run.id, Some(&["use_it".to_string()]))
        .await
        .expect("xcom");
    assert_eq!(
        xcom[0].value,
        sluice_store::XcomValue::Inline(format!("{{\"len\":{}}}", secret.len()))
    );
    // … but its log shows it masked.
    let log = std::fs::read_to_string(home.path().join("logs").join(log_path(
        "secretive",
        &run.run_id,
        "use_it",
        -1,
        1,
    )))
    .expect("log");
    assert!(log.contains("calling with ***"), "{log}");
    assert!(!log.contains(secret), "{log}");
    // A failure message that echoes the secret is stored masked.
    let leak = tis
        .iter()
        .find(|t| t.task_id == "leak_it")
        .expect("leak_it");
    let error = leak.error.clone().unwrap_or_default();
    assert!(error.contains("bad token ***"), "{error}");
    assert!(!error.contains(secret), "{error}");
    let tries = db.store.tries(leak.id).await.expect("tries");
    assert!(!tries[0].error.clone().unwrap_or_default().contains(secret));
    db.cleanup().await;
}

#[tokio::test]
async fn a_missing_secret_fails_the_try_naming_it() {
    let db = TestDb::sqlite().await;
    let home = tempfile::tempdir().expect("tempdir");
    let registry = Registry::builtin();
    let cfg = sluice::executor_config(&sluice::config::Config {
        home: home.path().to_path_buf(),
        ..Default::default()
    })
    .expect("config");
    let src = "[dag]\nid = \"nosecret\"\n[tasks.a]\nkind = \"shell\"\ncommand = \"echo {{ secrets.NOT_THERE_XYZ }}\"\n";
    let dag = parse_dag(src, Path::new("n.toml"), &registry).expect("valid");
    let run = run_to_completion(
        &db.store,
        &registry,
        cfg,
        &dag,
        NewRun::manual("nosecret", now(), None, json!({})),
    )
    .await
    .expect("run");
    let ti = &db.store.task_instances(run.id).await.expect("tis")[0];
    assert_eq!(ti.state.as_deref(), Some("failed"));
    let error = ti.error.clone().unwrap_or_default();
    assert!(
        error.contains("secret `NOT_THERE_XYZ` is not set")
            && error.contains("SLUICE_SECRET_NOT_THERE_XYZ"),
        "{error}"
    );
    db.cleanup().await;
}
