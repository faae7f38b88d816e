//! Wake-ups between processes on PostgreSQL (LISTEN/NOTIFY): a process that made work
//! runnable (started a run, scheduled tasks, finished a run) notifies, and the others
//! claim or schedule within milliseconds instead of at their next poll. Only a hint:
//! every loop still polls, so a notification lost in a reconnect costs one poll
//! interval, never work. On SQLite (one process) there is nobody to tell.

use sqlx::postgres::PgListener;

use crate::{Db, Result, Store};

/// The channel every Sluice process listens on.
const CHANNEL: &str = "sluice_work";

/// Receives the notifications of other processes.
pub struct WorkListener(PgListener);

impl WorkListener {
    /// Waits for the next notification. After a lost connection it reconnects and
    /// listens again (notifications sent meanwhile are lost: the pollers cover them).
    pub async fn recv(&mut self) -> Result<()> {
        self.0.recv().await?;
        Ok(())
    }
}

impl Store {
    /// Tells the other processes there may be new work. A no-op on SQLite.
    pub async fn notify_work(&self) -> Result<()> {
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Listens for [`Store::notify_work`] of any process; `None` on SQLite.
    pub async fn work_listener(&self) -> Result<Option<WorkListener>> {
        match &self.db {
            Db::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await?;
                listener.listen(CHANNEL).await?;
                Ok(Some(WorkListener(listener)))
            }
            Db::Sqlite(_) => Ok(None),
        }
    }
}
