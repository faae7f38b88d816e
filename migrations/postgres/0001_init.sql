-- Sluice metadata store, PostgreSQL dialect. Keep in step with ../sqlite/0001_init.sql:
-- the same tables, columns and indexes; only types differ (TIMESTAMPTZ, BIGSERIAL).
-- JSON is stored as TEXT in both dialects so one set of queries serves both.

CREATE TABLE dag (
    dag_id            TEXT PRIMARY KEY,
    is_paused         BOOLEAN NOT NULL,
    is_active         BOOLEAN NOT NULL,
    fileloc           TEXT NOT NULL,
    latest_version_id BIGINT,
    description       TEXT,
    schedule          TEXT NOT NULL,
    timezone          TEXT NOT NULL,
    tags              TEXT NOT NULL,
    max_active_runs   BIGINT NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

CREATE TABLE dag_version (
    id             BIGSERIAL PRIMARY KEY,
    dag_id         TEXT NOT NULL REFERENCES dag (dag_id) ON DELETE CASCADE,
    version_number BIGINT NOT NULL,
    source_hash    TEXT NOT NULL,
    definition     TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    UNIQUE (dag_id, source_hash),
    UNIQUE (dag_id, version_number)
);

CREATE TABLE dag_run (
    id                  BIGSERIAL PRIMARY KEY,
    dag_id              TEXT NOT NULL REFERENCES dag (dag_id) ON DELETE CASCADE,
    run_id              TEXT NOT NULL,
    dag_version_id      BIGINT NOT NULL REFERENCES dag_version (id),
    run_type            TEXT NOT NULL,
    state               TEXT NOT NULL,
    logical_date        TIMESTAMPTZ NOT NULL,
    data_interval_start TIMESTAMPTZ NOT NULL,
    data_interval_end   TIMESTAMPTZ NOT NULL,
    conf                TEXT NOT NULL,
    max_active_tasks    BIGINT NOT NULL,
    queued_at           TIMESTAMPTZ NOT NULL,
    start_date          TIMESTAMPTZ,
    end_date            TIMESTAMPTZ,
    timeout_at          TIMESTAMPTZ,
    note                TEXT,
    UNIQUE (dag_id, run_id),
    -- Exactly one run per logical date, whatever number of schedulers race to create it.
    UNIQUE (dag_id, logical_date)
);
CREATE INDEX dag_run_dag_state ON dag_run (dag_id, state, logical_date);
CREATE INDEX dag_run_active ON dag_run (state) WHERE state IN ('queued', 'running');

CREATE TABLE task_instance (
    id              BIGSERIAL PRIMARY KEY,
    dag_run_id      BIGINT NOT NULL REFERENCES dag_run (id) ON DELETE CASCADE,
    dag_id          TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    map_index       BIGINT NOT NULL,
    -- NULL is Airflow's "none": not yet decided.
    state           TEXT,
    try_number      BIGINT NOT NULL,
    max_tries       BIGINT NOT NULL,
    pool            TEXT NOT NULL,
    pool_slots      BIGINT NOT NULL,
    priority_weight BIGINT NOT NULL,
    logical_date    TIMESTAMPTZ NOT NULL,
    scheduled_at    TIMESTAMPTZ,
    start_date      TIMESTAMPTZ,
    end_date        TIMESTAMPTZ,
    duration_ms     BIGINT,
    next_try_at     TIMESTAMPTZ,
    owner           TEXT,
    lease           TEXT,
    hostname        TEXT,
    error           TEXT,
    UNIQUE (dag_run_id, task_id, map_index)
);
-- The claim query walks this index in priority order; it holds only runnable rows.
CREATE INDEX ti_runnable ON task_instance (priority_weight DESC, logical_date, id)
    WHERE state IN ('scheduled', 'up_for_retry');
CREATE INDEX ti_active ON task_instance (owner, pool, dag_run_id) WHERE state IN ('queued', 'running');

CREATE TABLE task_try (
    ti_id       BIGINT NOT NULL REFERENCES task_instance (id) ON DELETE CASCADE,
    try_number  BIGINT NOT NULL,
    state       TEXT NOT NULL,
    start_date  TIMESTAMPTZ NOT NULL,
    end_date    TIMESTAMPTZ,
    duration_ms BIGINT,
    owner       TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    log_path    TEXT NOT NULL,
    error       TEXT,
    PRIMARY KEY (ti_id, try_number)
);

CREATE TABLE xcom (
    dag_run_id    BIGINT NOT NULL REFERENCES dag_run (id) ON DELETE CASCADE,
    task_id       TEXT NOT NULL,
    map_index     BIGINT NOT NULL,
    key           TEXT NOT NULL,
    -- Exactly one of value (inline JSON) and artifact_path (spilled JSON file) is set.
    value         TEXT,
    artifact_path TEXT,
    size_bytes    BIGINT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (dag_run_id, task_id, map_index, key)
);

CREATE TABLE variable (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    description TEXT
);

CREATE TABLE pool (
    name        TEXT PRIMARY KEY,
    slots       BIGINT NOT NULL,
    description TEXT
);
INSERT INTO pool (name, slots, description) VALUES ('default_pool', 128, 'Default pool');

CREATE TABLE worker (
    id           TEXT PRIMARY KEY,
    hostname     TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    role         TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    stopped_at   TIMESTAMPTZ
);

CREATE TABLE import_error (
    fileloc    TEXT PRIMARY KEY,
    errors     TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL,
    event   TEXT NOT NULL,
    dag_id  TEXT,
    run_id  TEXT,
    actor   TEXT NOT NULL,
    detail  TEXT
);
