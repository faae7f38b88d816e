//! The `csv` and `files` kinds on real files in temporary directories; `files` once-only
//! behaviour with an in-memory state backend that commits proposals when a test says
//! the run succeeded.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use sluice_tasks::{MemoryState, Registry, TaskContext, TaskError, TaskState, TryLog};

fn args(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

async fn run_kind(kind: &str, ctx: &TaskContext, a: Value) -> Result<Value, TaskError> {
    Registry::builtin()
        .get(kind)
        .expect("registered")
        .run(ctx, args(a))
        .await
}

// ---------------------------------------------------------------------------------
// csv
// ---------------------------------------------------------------------------------

const TYPES: &str =
    r#"{"release_year": "int", "imdb_score": "float", "seasons": "int", "genres": "list"}"#;

/// A movies-and-TV-shows catalogue like the Netflix/Disney+ datasets: quoted titles
/// with commas, descriptions with newlines and doubled quotes, empty seasons for
/// movies. Returns the file's text and the number of rows.
fn catalogue() -> (String, usize) {
    let countries = ["US", "KR", "JP", "GB", "IN", "FR"];
    let genres = [
        "drama",
        "comedy",
        "thriller",
        "documentation",
        "animation",
        "crime",
    ];
    let mut s =
        String::from("id,title,type,description,country,release_year,genres,imdb_score,seasons\n");
    let n = 60;
    for i in 0..n {
        let show = i % 3 == 0;
        let title = match i {
            0 => "Squid Game".to_string(),
            1 => "Crouching Tiger, Hidden Dragon".to_string(),
            2 => "The \"Best\" Movie".to_string(),
            _ => format!("Title {i}"),
        };
        let desc = if i % 4 == 1 {
            format!("Line one of {i},\nline two; with \"quotes\"")
        } else {
            format!("Plain description {i}")
        };
        let g = format!("{}, {}", genres[i % 6], genres[(i + 1) % 6]);
        let seasons = if show {
            format!("{}", 1 + i % 4)
        } else {
            String::new()
        };
        let q = |f: &str| format!("\"{}\"", f.replace('"', "\"\""));
        writeln!(
            s,
            "tm{i},{},{},{},{},{},{},{:.1},{seasons}",
            q(&title),
            if show { "SHOW" } else { "MOVIE" },
            q(&desc),
            countries[i % 6],
            2000 + (i % 24),
            q(&g),
            5.0 + (i % 50) as f64 / 10.0,
        )
        .expect("write");
    }
    (s, n)
}

#[tokio::test]
async fn csv_catalogue_becomes_typed_records() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("titles.csv");
    let (text, n) = catalogue();
    std::fs::write(&path, &text).expect("write");
    let ctx = TaskContext::detached("d", "csv");
    let types: Value = serde_json::from_str(TYPES).expect("types");
    let out = run_kind("csv", &ctx, json!({"path": path, "types": types}))
        .await
        .expect("reads");
    let recs = out.as_array().expect("records");
    assert_eq!(recs.len(), n);
    assert_eq!(
        recs[0],
        json!({
            "id": "tm0", "title": "Squid Game", "type": "SHOW", "description": "Plain description 0",
            "country": "US", "release_year": 2000, "genres": ["drama", "comedy"], "imdb_score": 5.0, "seasons": 1
        })
    );
    assert_eq!(recs[1]["title"], "Crouching Tiger, Hidden Dragon");
    assert_eq!(
        recs[1]["description"],
        "Line one of 1,\nline two; with \"quotes\""
    );
    assert_eq!(recs[1]["seasons"], Value::Null, "movies have no seasons");
    assert_eq!(recs[2]["title"], "The \"Best\" Movie");
    assert_eq!(recs[2]["imdb_score"], 5.2);
    let m = ctx.metrics.snapshot();
    assert_eq!(m.records_in, n as u64);
    assert_eq!(m.bytes_in, text.len() as u64);

    // limit, columns overriding the header, a tab-separated headerless file.
    let out = run_kind(
        "csv",
        &ctx,
        json!({"path": path, "limit": 5, "columns": ["a","b","c","d","e","f","g","h","i"]}),
    )
    .await
    .expect("reads");
    assert_eq!(out.as_array().map(Vec::len), Some(5));
    assert_eq!(out[0]["b"], "Squid Game");
    let tsv = dir.path().join("plain.tsv");
    std::fs::write(
        &tsv,
        "# exported 2024-08-01\n1\ttrue\t[1,2]\n2\tno\t{\"a\":1}\n",
    )
    .expect("write");
    let out = run_kind(
        "csv",
        &ctx,
        json!({"path": tsv, "delimiter": "\t", "has_header": false, "skip_rows": 1,
               "types": {"column_1": "int", "column_2": "bool", "column_3": "json"}}),
    )
    .await
    .expect("reads");
    assert_eq!(
        out,
        json!([
            {"column_1": 1, "column_2": true, "column_3": [1, 2]},
            {"column_1": 2, "column_2": false, "column_3": {"a": 1}}
        ])
    );
}

#[tokio::test]
async fn csv_bad_rows_fail_with_their_line_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.csv");
    // Row 2 spans lines 3-4; the short row starts on line 5; line 7 has a bad int.
    std::fs::write(
        &path,
        "title,type,seasons\nA,SHOW,1\n\"B\nsecond line\",MOVIE,\nC,SHOW\nD,SHOW,2\nE,SHOW,two\nF,MOVIE,\n",
    )
    .expect("write");
    let types = json!({"seasons": "int"});
    let err = run_kind(
        "csv",
        &TaskContext::detached("d", "c"),
        json!({"path": path, "types": types}),
    )
    .await
    .expect_err("short row");
    let msg = err.to_string();
    assert!(
        msg.contains("line 5") && msg.contains("expected 3 fields, found 2"),
        "{msg}"
    );
    assert!(msg.contains("bad.csv"), "{msg}");

    let err = run_kind("csv", &TaskContext::detached("d", "c"), json!({"path": path, "types": types, "has_header": false, "columns": ["title", "type", "seasons"], "skip_rows": 5}))
        .await
        .expect_err("bad int");
    let msg = err.to_string();
    assert!(
        msg.contains("line 7") && msg.contains("column `seasons`") && msg.contains("\"two\""),
        "{msg}"
    );

    let log_path = dir.path().join("try.log");
    let ctx = TaskContext {
        log: TryLog::open(&log_path).expect("log"),
        ..TaskContext::detached("d", "c")
    };
    let out = run_kind(
        "csv",
        &ctx,
        json!({"path": path, "types": types, "on_bad_row": "skip"}),
    )
    .await
    .expect("skips");
    let titles: Vec<&str> = out
        .as_array()
        .expect("a")
        .iter()
        .map(|r| r["title"].as_str().expect("t"))
        .collect();
    assert_eq!(titles, vec!["A", "B\nsecond line", "D", "F"]);
    let m = ctx.metrics.snapshot();
    assert_eq!(
        m.records_in - titles.len() as u64,
        2,
        "rows read minus records = skipped"
    );
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("skipped 2 bad row(s)"), "{log}");
    assert!(
        log.contains("line 5: skipped bad row") && log.contains("line 7: skipped bad row"),
        "{log}"
    );
}

#[tokio::test]
async fn csv_reads_euc_kr() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("kr.csv");
    let text = "제목,국가,연도\n\"오징어 게임, 시즌 1\",한국,2021\n기생충,한국,2019\n";
    let (bytes, _, had_errors) = encoding_rs::EUC_KR.encode(text);
    assert!(!had_errors);
    assert!(
        std::str::from_utf8(&bytes).is_err(),
        "the fixture is really not UTF-8"
    );
    std::fs::write(&path, &bytes).expect("write");
    let out = run_kind(
        "csv",
        &TaskContext::detached("d", "c"),
        json!({"path": path, "encoding": "euc-kr", "types": {"연도": "int"}}),
    )
    .await
    .expect("reads");
    assert_eq!(
        out,
        json!([
            {"제목": "오징어 게임, 시즌 1", "국가": "한국", "연도": 2021},
            {"제목": "기생충", "국가": "한국", "연도": 2019}
        ])
    );
    // Read as UTF-8 the same bytes are a bad row, not silent garbage.
    let err = run_kind(
        "csv",
        &TaskContext::detached("d", "c"),
        json!({"path": path}),
    )
    .await
    .expect_err("not utf-8");
    assert!(
        err.to_string().contains("UTF-8") || err.to_string().contains("utf-8"),
        "{err}"
    );
    let err = run_kind(
        "csv",
        &TaskContext::detached("d", "c"),
        json!({"path": path, "encoding": "klingon"}),
    )
    .await
    .expect_err("bad label");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("encoding")),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------
// files
// ---------------------------------------------------------------------------------

/// Runs `files` as one DAG run; commits its proposals if `succeeds`.
async fn files_run(state: &Arc<MemoryState>, a: Value, succeeds: bool) -> Vec<Value> {
    let ctx = TaskContext {
        state: Arc::new(TaskState::new(state.clone(), "files_dag.pick".into())),
        ..TaskContext::detached("files_dag", "pick")
    };
    let out = run_kind("files", &ctx, a).await.expect("files runs");
    let proposals = ctx.state.take_proposals();
    if succeeds {
        state.commit("files_dag.pick", proposals);
    }
    out.as_array().expect("records").clone()
}

fn names(recs: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = recs
        .iter()
        .map(|r| r["fileName"].as_str().expect("name").to_string())
        .collect();
    n.sort();
    n
}

fn age(path: &Path, by: Duration) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.set_modified(SystemTime::now() - by).expect("set mtime");
}

#[tokio::test]
async fn new_files_are_emitted_once_across_runs_and_again_after_a_failed_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::write(d.join("a.txt"), "subject A\nbody A").expect("w");
    std::fs::write(d.join("b.txt"), "subject B\nbody B").expect("w");
    std::fs::write(d.join("ignored.csv"), "x").expect("w");
    let state = Arc::new(MemoryState::default());
    let a = json!({"dir": d});

    let first = files_run(&state, a.clone(), false).await;
    assert_eq!(names(&first), vec!["a.txt", "b.txt"]);
    let rec = first.iter().find(|r| r["fileName"] == "a.txt").expect("a");
    assert_eq!(rec["content"], "subject A\nbody A");
    assert_eq!(rec["size"], 16);
    assert_eq!(rec["truncated"], false);
    assert_eq!(rec["fullPathName"], d.join("a.txt").display().to_string());
    chrono::DateTime::parse_from_rfc3339(rec["modified"].as_str().expect("modified"))
        .expect("RFC 3339");

    // That run failed: nothing was committed, so the same files come again.
    let retry = files_run(&state, a.clone(), true).await;
    assert_eq!(names(&retry), vec!["a.txt", "b.txt"]);

    // Committed now: a new run (after a restart too — state is all there is) skips them.
    assert!(files_run(&state, a.clone(), true).await.is_empty());
    std::fs::write(d.join("c.txt"), "new").expect("w");
    assert_eq!(
        names(&files_run(&state, a.clone(), true).await),
        vec!["c.txt"]
    );

    // A file rewritten with new content is a new file.
    std::fs::write(d.join("a.txt"), "subject A\nbody A, edited").expect("w");
    assert_eq!(
        names(&files_run(&state, a.clone(), true).await),
        vec!["a.txt"]
    );
    assert!(files_run(&state, a, true).await.is_empty());
}

#[tokio::test]
async fn files_too_recent_for_min_age_wait_for_a_later_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::write(d.join("old.txt"), "done writing").expect("w");
    age(&d.join("old.txt"), Duration::from_secs(120));
    std::fs::write(d.join("writing.txt"), "still being wr").expect("w");
    let state = Arc::new(MemoryState::default());
    let recs = files_run(&state, json!({"dir": d, "min_age": "1m"}), true).await;
    assert_eq!(names(&recs), vec!["old.txt"]);
    age(&d.join("writing.txt"), Duration::from_secs(90));
    let recs = files_run(&state, json!({"dir": d, "min_age": "1m"}), true).await;
    assert_eq!(names(&recs), vec!["writing.txt"]);
}

#[tokio::test]
async fn long_content_is_truncated_and_flagged() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    std::fs::write(d.join("long.txt"), "가나다라마바사").expect("w"); // 3 bytes per character
    std::fs::write(d.join("short.txt"), "가나").expect("w");
    let state = Arc::new(MemoryState::default());
    let ctx_recs = files_run(&state, json!({"dir": d, "max_bytes": 7}), true).await;
    let long = ctx_recs
        .iter()
        .find(|r| r["fileName"] == "long.txt")
        .expect("long");
    assert_eq!(long["truncated"], true);
    assert_eq!(
        long["content"], "가나",
        "a character cut in half is dropped"
    );
    assert_eq!(long["size"], 21);
    let short = ctx_recs
        .iter()
        .find(|r| r["fileName"] == "short.txt")
        .expect("short");
    assert_eq!(short["truncated"], false);
    assert_eq!(short["content"], "가나");

    // Other encodings are decoded.
    let (bytes, _, _) = encoding_rs::EUC_KR.encode("안녕하세요");
    std::fs::write(d.join("kr.txt"), &bytes).expect("w");
    let recs = files_run(&state, json!({"dir": d, "encoding": "euc-kr"}), true).await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["content"], "안녕하세요");
}

#[tokio::test]
async fn committed_files_are_archived_by_the_next_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let inbox = dir.path().join("inbox");
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(inbox.join("sub")).expect("mkdir");
    std::fs::write(inbox.join("a.txt"), "a").expect("w");
    std::fs::write(inbox.join("sub/b.txt"), "b").expect("w");
    let state = Arc::new(MemoryState::default());
    let a = json!({"dir": inbox, "recursive": true, "archive_dir": archive});

    // A failed run archives nothing: the files must still be there for the retry.
    assert_eq!(
        names(&files_run(&state, a.clone(), false).await),
        vec!["a.txt", "b.txt"]
    );
    assert!(inbox.join("a.txt").exists());
    assert_eq!(
        names(&files_run(&state, a.clone(), true).await),
        vec!["a.txt", "b.txt"]
    );
    assert!(
        inbox.join("a.txt").exists(),
        "kept until the run has succeeded"
    );

    std::fs::write(inbox.join("c.txt"), "c").expect("w");
    let recs = files_run(&state, a.clone(), true).await;
    assert_eq!(names(&recs), vec!["c.txt"]);
    assert!(!inbox.join("a.txt").exists() && !inbox.join("sub/b.txt").exists());
    assert_eq!(
        std::fs::read_to_string(archive.join("a.txt")).expect("archived"),
        "a"
    );
    assert_eq!(
        std::fs::read_to_string(archive.join("sub/b.txt")).expect("archived"),
        "b"
    );
    assert!(inbox.join("c.txt").exists());

    // A glob with a directory part matches relative paths.
    std::fs::write(inbox.join("sub/d.log"), "d").expect("w");
    let recs = files_run(
        &state,
        json!({"dir": inbox, "glob": "sub/*.log", "recursive": true}),
        true,
    )
    .await;
    assert_eq!(names(&recs), vec!["d.log"]);
    let err = run_kind(
        "files",
        &TaskContext::detached("d", "f"),
        json!({"dir": dir.path().join("nope")}),
    )
    .await
    .expect_err("missing dir");
    assert!(
        matches!(&err, TaskError::Fatal(m) if m.contains("not a directory")),
        "{err:?}"
    );
}
