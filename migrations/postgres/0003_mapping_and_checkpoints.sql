-- Mapped tasks: each mapped instance keeps its item, and a cap on how many of a
-- task's instances of one run may be active at once (`map_concurrency`).
ALTER TABLE task_instance ADD COLUMN map_item TEXT;
ALTER TABLE task_instance ADD COLUMN max_active_per_run BIGINT;

-- Checkpoint values committed by successful runs that still have to be written to
-- Redis. Filled in the transaction that marks the run successful, emptied once Redis
-- has them: a crash in between leaves the rows here for the next flush.
CREATE TABLE checkpoint_outbox (
    id         BIGSERIAL PRIMARY KEY,
    dag_id     TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    dag_run_id BIGINT,
    created_at TIMESTAMPTZ NOT NULL
);
