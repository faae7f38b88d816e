//! Mapped tasks (`map_over`): one task instance per item of an upstream XCom, with
//! `item` in its templates, at most `map_concurrency` at once, their XComs read
//! downstream as a list in map-index order; an empty list skips the task.

mod common;

use std::path::Path;

use common::Sandbox;
use serde_json::json;
use sluice::local_run::run_to_completion;
use sluice_core::loader::parse_dag;
use sluice_store::testing::TestDb;
use sluice_store::{now, NewRun, Store, TiRow};
use sluice_tasks::Registry;

async fn run(store: &Store, home: &Path, url: &str, src: &str) -> (String, Vec<TiRow>) {
    let registry = Registry::builtin();
    let dag = parse_dag(src, Path::new("mapped.toml"), &registry).expect("valid DAG");
    let cfg = sluice::config::Config {
        home: home.to_path_buf(),
        database_url: Some(url.to_string()),
        ..Default::default()
    };
    let run = run_to_completion(
        store,
        &registry,
        sluice::executor_config(&cfg).expect("config"),
        &dag,
        NewRun::manual(&dag.dag_id, now(), None, json!({})),
    )
    .await
    .expect("run");
    let state = store
        .run_by_pk(run.id)
        .await
        .expect("run")
        .expect("exists")
        .state;
    (state, store.task_instances(run.id).await.expect("tis"))
}

fn of<'a>(tis: &'a [TiRow], task: &str) -> Vec<&'a TiRow> {
    let mut v: Vec<&TiRow> = tis.iter().filter(|t| t.task_id == task).collect();
    v.sort_by_key(|t| t.map_index);
    v
}

/// Most intervals of `[start, end]` (nanoseconds) open at one time.
fn max_overlap(log: &str) -> usize {
    let mut events: Vec<(u128, i32)> = log
        .lines()
        .filter_map(|l| {
            let (t, what) = l.split_once(' ')?;
            Some((t.parse().ok()?, if what == "start" { 1 } else { -1 }))
        })
        .collect();
    // Ends before starts at the same instant: touching intervals do not overlap.
    events.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in events {
        open += d;
        most = most.max(open);
    }
    most as usize
}

#[tokio::test]
async fn mapped_instances_run_per_item_within_the_cap() {
    let home = Sandbox::new();
    for (backend, db) in TestDb::both().await {
        let log = home.path().join(format!("{backend}-spans.log"));
        let src = format!(
            r#"
[dag]
id = "mapped_{backend}"

[tasks.ids]
kind = "shell"
command = "echo '[3, 1, 4, 1, 5, 9]'"

[tasks.each]
kind = "shell"
upstream = ["ids"]
map_over = "{{{{ xcom.ids }}}}"
map_concurrency = 2
command = "echo $(date +%s%N) start >> {log}; sleep 0.3; echo $(date +%s%N) end >> {log}; echo {{{{ item * 10 }}}}"

[tasks.total]
kind = "shell"
upstream = ["each"]
command = "echo '{{{{ xcom.each | join(\",\") }}}}'"
"#,
            log = log.display()
        );
        let (state, tis) = run(&db.store, home.path(), &db.url, &src).await;
        assert_eq!(state, "success", "{backend}");
        let each = of(&tis, "each");
        assert_eq!(
            each.iter().map(|t| t.map_index).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5],
            "{backend}"
        );
        assert!(
            each.iter()
                .all(|t| t.state.as_deref() == Some("success") && t.try_number == 1),
            "{backend}: {each:?}"
        );
        let spans = std::fs::read_to_string(&log).expect("span log");
        assert_eq!(spans.lines().count(), 12, "{backend}: {spans}");
        let overlap = max_overlap(&spans);
        assert!(
            overlap <= 2,
            "{backend}: {overlap} instances ran at once, cap is 2"
        );
        assert_eq!(
            overlap, 2,
            "{backend}: mapped instances should run in parallel"
        );

        // Downstream reads the mapped XComs as one list, in map-index order.
        let run_pk = tis[0].dag_run_id;
        let xcoms = db
            .store
            .xcoms(run_pk, Some(&["total".to_string()]))
            .await
            .expect("xcom");
        assert_eq!(
            xcoms[0].value,
            sluice_store::XcomValue::Inline("\"30,10,40,10,50,90\"".into()),
            "{backend}"
        );
        db.cleanup().await;
    }
}

#[tokio::test]
async fn an_empty_list_skips_the_task_and_a_non_list_fails_it() {
    let home = Sandbox::new();
    let db = TestDb::sqlite().await;
    let (state, tis) = run(
        &db.store,
        home.path(),
        &db.url,
        r#"
[dag]
id = "empty_map"

[tasks.ids]
kind = "shell"
command = "echo '[]'"

[tasks.each]
kind = "shell"
upstream = ["ids"]
map_over = "{{ xcom.ids }}"
command = "echo {{ item }}"

[tasks.after]
kind = "shell"
upstream = ["each"]
command = "echo done"
"#,
    )
    .await;
    assert_eq!(state, "success");
    let each = of(&tis, "each");
    assert_eq!(each.len(), 1);
    assert_eq!(each[0].state.as_deref(), Some("skipped"));
    assert_eq!(of(&tis, "after")[0].state.as_deref(), Some("skipped"));

    let (state, tis) = run(
        &db.store,
        home.path(),
        &db.url,
        r#"
[dag]
id = "bad_map"

[tasks.ids]
kind = "shell"
command = "echo '{\"not\": \"a list\"}'"

[tasks.each]
kind = "shell"
upstream = ["ids"]
map_over = "{{ xcom.ids }}"
command = "echo {{ item }}"
"#,
    )
    .await;
    assert_eq!(state, "failed");
    let each = of(&tis, "each");
    let error = each[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("`map_over` must render to a list, got {\"not\":\"a list\"}"),
        "{error}"
    );

    // A literal list maps a root task; items can be tables.
    let (state, tis) = run(
        &db.store,
        home.path(),
        &db.url,
        r#"
[dag]
id = "literal_map"

[tasks.greet]
kind = "shell"
map_over = [{ name = "ko", word = "annyeong" }, { name = "en", word = "hello" }]
command = "echo '{{ item.name }}={{ item.word }}'"
"#,
    )
    .await;
    assert_eq!(state, "success");
    let rows = db
        .store
        .xcoms(tis[0].dag_run_id, None)
        .await
        .expect("xcoms");
    let values: Vec<_> = rows
        .iter()
        .map(|r| (r.map_index, r.value.clone()))
        .collect();
    assert_eq!(
        values,
        vec![
            (0, sluice_store::XcomValue::Inline("\"ko=annyeong\"".into())),
            (1, sluice_store::XcomValue::Inline("\"en=hello\"".into())),
        ]
    );
    db.cleanup().await;
}
