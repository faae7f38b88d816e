//! Connections and secrets stored in the metadata store: encrypted at rest with the
//! operator's key, never listed in clear, used by tasks, masked in their logs, and
//! unreadable (with a clear error) under a wrong key.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::Sandbox;
use sluice_store::testing::pg_admin_url;

const SECRET: &str = "STEAM-KEY-5e1f0c9a77d3";
const PASSWORD: &str = "Wh-pass-9731";

/// Bytes of the SQLite store, WAL included (recent commits live there).
fn store_bytes(home: &Sandbox) -> Vec<u8> {
    let db = home.path().join("sluice.db");
    let mut bytes = std::fs::read(&db).expect("sluice.db");
    if let Ok(wal) = std::fs::read(db.with_extension("db-wal")) {
        bytes.extend(wal);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn stored_credentials_are_encrypted_listed_safely_and_used_by_tasks() {
    let mut home = Sandbox::new();

    // Without a key nothing is stored, and the error says what to do.
    let r = home.run(&["secrets", "set", "steam_key", "--value", SECRET]);
    assert!(!r.success(), "{}", r.describe());
    assert!(
        r.stderr.contains("SLUICE_FERNET_KEY") && r.stderr.contains("sluice secrets generate-key"),
        "{}",
        r.describe()
    );

    let key = home
        .ok(&["secrets", "generate-key"])
        .stdout
        .trim()
        .to_string();
    assert_eq!(
        key.len(),
        44,
        "a Fernet key is 32 bytes in url-safe base64: {key}"
    );
    home.set_env("SLUICE_FERNET_KEY", &key);

    // A connection to the real PostgreSQL, with a password we can look for (trust
    // auth ignores it; where the server needs one, the URL has it already).
    let pg = pg_admin_url();
    let (scheme, rest) = pg.split_once("://").expect("pg url");
    let (userinfo, hostpart) = rest.split_once('@').expect("pg url has a user");
    let has_password = userinfo.contains(':');
    let uri = if has_password {
        pg.clone()
    } else {
        format!("{scheme}://{userinfo}:{PASSWORD}@{hostpart}")
    };
    let host = hostpart.split([':', '/']).next().expect("host").to_string();
    home.ok(&[
        "connections",
        "add",
        "warehouse",
        "--conn-uri",
        &uri,
        "--conn-description",
        "the data warehouse",
    ]);
    // The secret comes from stdin, out of the shell history.
    let mut child = home
        .command(&[
            "secrets",
            "set",
            "steam_key",
            "--description",
            "Steam Web API",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{SECRET}\n").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // At rest: neither value is anywhere in the database files.
    let bytes = store_bytes(&home);
    assert!(!contains(&bytes, SECRET), "secret stored in clear");
    if !has_password {
        assert!(!contains(&bytes, PASSWORD), "password stored in clear");
    }

    // Listings show where things come from, never the values.
    let list = home.ok(&["connections", "list", "--json"]);
    assert!(!list.stdout.contains(PASSWORD), "{}", list.stdout);
    let rows = list.json();
    let wh = rows
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["conn_id"] == "warehouse")
        .expect("warehouse listed")
        .clone();
    assert_eq!(wh["source"], "store");
    assert_eq!(wh["conn_type"], scheme);
    assert_eq!(wh["host"], host.as_str());
    assert_eq!(wh["description"], "the data warehouse");
    let secrets = home.ok(&["secrets", "list"]);
    assert!(
        secrets.stdout.contains("steam_key") && secrets.stdout.contains("Steam Web API"),
        "{}",
        secrets.stdout
    );
    assert!(!secrets.stdout.contains(SECRET));

    // A DAG uses both: the secret must arrive intact, the connection must work, and
    // the log must show neither.
    let table = format!("sluice_cred_{}", std::process::id());
    home.write_dag(
        "creds.toml",
        &format!(
            r#"
[dag]
id = "creds"

[tasks.check_key]
kind = "shell"
command = "test '{{{{ secrets.steam_key }}}}' = '{SECRET}' && echo 'key is {{{{ secrets.steam_key }}}}'"

[tasks.write]
kind = "pg_write"
upstream = ["check_key"]
connection = "warehouse"
table = "{table}"
create_table = true
records = [{{ id = 1, note = "stored connection works" }}]
"#
        ),
    );
    let run = home.run(&["dags", "test", "creds"]);
    assert!(run.success(), "{}", run.describe());
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));
    // `tasks test` prints the task's log and XCom: masked.
    let one = home.ok(&["tasks", "test", "creds", "check_key"]);
    assert!(one.stdout.contains("key is ***"), "{}", one.stdout);
    assert!(!one.stdout.contains(SECRET), "{}", one.stdout);

    // The row is really there, written through the stored connection.
    let n = common::block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&pg_admin_url())
            .await
            .expect("pg");
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{table}\""))
            .fetch_one(&mut c)
            .await
            .expect("count");
        sqlx::query(&format!("DROP TABLE \"{table}\""))
            .execute(&mut c)
            .await
            .expect("drop");
        n
    });
    assert_eq!(n, 1);

    // Under a wrong key the run refuses to start, naming what it cannot read.
    let other = home
        .ok(&["secrets", "generate-key"])
        .stdout
        .trim()
        .to_string();
    home.set_env("SLUICE_FERNET_KEY", &other);
    let run = home.run(&["dags", "test", "creds"]);
    assert!(!run.success(), "{}", run.describe());
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("stored connection `warehouse`: cannot decrypt")
            || all.contains("stored secret `steam_key`: cannot decrypt"),
        "{all}"
    );
    // Key rotation: new key first, old key still decrypts.
    home.set_env("SLUICE_FERNET_KEY", &format!("{other},{key}"));
    home.ok(&["connections", "get", "warehouse"]);
    home.ok(&["connections", "delete", "warehouse"]);
    let r = home.run(&["connections", "get", "warehouse"]);
    assert!(!r.success() && r.stderr.contains("connection warehouse is not defined"));

    // The environment wins over the store.
    home.ok(&["connections", "add", "warehouse", "--conn-uri", &uri]);
    home.set_env("SLUICE_CONN_WAREHOUSE", "postgres://other@elsewhere:5432/x");
    let got = home
        .ok(&["connections", "get", "warehouse", "--json"])
        .json();
    assert_eq!(got["source"], "env");
    assert_eq!(got["host"], "elsewhere");
}
