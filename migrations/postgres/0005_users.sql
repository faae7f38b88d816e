-- Users of the REST API (`sluice users create`, and the admin `sluice standalone`
-- creates on first start). Only an argon2 hash of each password is stored.
CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);

-- Secrets the processes of one installation must agree on, generated once by the
-- first process that needs them (the API's JWT signing key when none is configured).
CREATE TABLE web_secret (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
