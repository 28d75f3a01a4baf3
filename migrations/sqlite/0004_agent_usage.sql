-- One row per run of the AI CLI (a `claude:` step): what it cost and where its transcript is.
-- Items' rows carry their key and attempt; setup/reduce/merge rows have neither.
CREATE TABLE agent_runs (
    job_id                TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    transcript            TEXT NOT NULL,
    phase                 TEXT NOT NULL,
    item_key              TEXT,
    attempt               INTEGER,
    session_id            TEXT,
    model                 TEXT,
    subtype               TEXT,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cost_usd              REAL NOT NULL DEFAULT 0,
    turns                 INTEGER NOT NULL DEFAULT 0,
    api_ms                INTEGER NOT NULL DEFAULT 0,
    duration_ms           INTEGER NOT NULL DEFAULT 0,
    finished_at           TEXT NOT NULL,
    PRIMARY KEY (job_id, transcript)
);
CREATE INDEX agent_runs_item ON agent_runs (job_id, item_key, attempt);

