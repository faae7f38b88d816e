-- What each try read and wrote, and the durable state tasks keep between runs
-- (processed files, crawled URLs, consumer offsets, checkpoints).

ALTER TABLE task_try ADD COLUMN records_in INTEGER;
ALTER TABLE task_try ADD COLUMN records_out INTEGER;
ALTER TABLE task_try ADD COLUMN bytes_in INTEGER;
ALTER TABLE task_try ADD COLUMN bytes_out INTEGER;

-- Committed state: what successful runs decided.
CREATE TABLE task_state (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    dag_run_id INTEGER,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);

-- State proposed by successful tries of a run that has not finished yet; moved into
-- task_state in the transaction that marks the run successful, dropped with the run
-- otherwise.
CREATE TABLE state_proposal (
    dag_run_id INTEGER NOT NULL REFERENCES dag_run (id) ON DELETE CASCADE,
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (dag_run_id, namespace, key)
);
