-- Connections and secrets kept in the store (added with `sluice connections add` and
-- `sluice secrets set`), encrypted with the operator's Fernet key. Only the name,
-- type and description are in clear, for listing.
CREATE TABLE connection (
    conn_id       TEXT PRIMARY KEY,
    conn_type     TEXT NOT NULL,
    description   TEXT,
    uri_encrypted TEXT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE secret (
    name            TEXT PRIMARY KEY,
    value_encrypted TEXT NOT NULL,
    description     TEXT,
    updated_at      TIMESTAMPTZ NOT NULL
);
