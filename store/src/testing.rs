//! Test support: fresh, migrated stores on both backends. Used by this workspace's
//! tests (enable the `testing` feature); not part of the runtime.

use crate::scratch::ScratchDatabase;
use crate::Store;

/// Where tests find PostgreSQL: `SLUICE_TEST_PG_URL`, default the local server.
/// Tests that need it fail (never skip) when it is unreachable: `.ci/run` starts it.
pub fn pg_admin_url() -> String {
    std::env::var("SLUICE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A store on a database that exists only for one test; dropped with the guard.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<ScratchDatabase>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = Store::connect(&url).await.expect("open sqlite");
        store.migrate().await.expect("migrate sqlite");
        TestDb {
            store,
            url,
            _dir: Some(dir),
            pg: None,
        }
    }

    pub async fn postgres() -> TestDb {
        let admin = pg_admin_url();
        let db = ScratchDatabase::create(&admin, "sluice_t_")
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test: {e}"));
        let store = Store::connect(&db.url).await.expect("open postgres");
        store.migrate().await.expect("migrate postgres");
        TestDb {
            store,
            url: db.url.clone(),
            _dir: None,
            pg: Some(db),
        }
    }

    /// Both backends, for tests that must behave the same on each.
    pub async fn both() -> Vec<(&'static str, TestDb)> {
        vec![
            ("sqlite", TestDb::sqlite().await),
            ("postgres", TestDb::postgres().await),
        ]
    }

    /// Closes the pool and drops the PostgreSQL database.
    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some(db) = self.pg {
            let _ = db.drop_database().await;
        }
    }
}
