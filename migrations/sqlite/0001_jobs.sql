-- Core job state. Times are RFC 3339 text in UTC written by prodigy (never SQL's own clock), so
-- they sort as text and read back as chrono values. JSON columns hold text.

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY NOT NULL,          -- UUID v7, hyphenated
    workflow_path TEXT NOT NULL,
    workflow_text TEXT NOT NULL,
    workflow_name TEXT NOT NULL,
    repo_path     TEXT NOT NULL,
    repo          TEXT,
    pr_number     INTEGER,
    head_sha      TEXT,
    status        TEXT NOT NULL,
    phase         TEXT NOT NULL,
    refs          TEXT NOT NULL DEFAULT '{}',
    vars          TEXT NOT NULL DEFAULT '{}',
    check_run_id  INTEGER,
    error         TEXT,
    -- Bumped by every lock acquisition; every write of job state is conditional on it.
    lease_epoch   INTEGER NOT NULL DEFAULT 0,
    -- Who took the lock last (JSON of store::Holder) and when, for "held by ... since ...".
    lock_holder   TEXT,
    locked_since  TEXT,
    -- Last event sequence number handed out for this job.
    event_seq     INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    finished_at   TEXT
);
CREATE INDEX jobs_repo_pr ON jobs (repo, pr_number);

CREATE TABLE work_items (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    position   INTEGER NOT NULL,
    data       TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending',
    attempts   INTEGER NOT NULL DEFAULT 0,
    merged     BOOLEAN NOT NULL DEFAULT FALSE,
    commit_sha TEXT,
    result     TEXT,
    PRIMARY KEY (job_id, key)
);
-- Serves items() in order (position, then key) without a sort.
CREATE INDEX work_items_position ON work_items (job_id, position, key);

-- One row per execution of an item; rows are completed, never replaced.
CREATE TABLE attempts (
    job_id      TEXT NOT NULL,
    key         TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    success     BOOLEAN,
    exit_code   INTEGER,
    error_class TEXT,
    signature   TEXT,
    message     TEXT,
    log_path    TEXT,
    worktree    TEXT,
    branch      TEXT,
    commit_sha  TEXT,
    PRIMARY KEY (job_id, key, attempt),
    FOREIGN KEY (job_id, key) REFERENCES work_items (job_id, key) ON DELETE CASCADE
);

CREATE TABLE dlq_items (
    job_id        TEXT NOT NULL,
    key           TEXT NOT NULL,
    data          TEXT NOT NULL,
    first_failure TEXT NOT NULL,
    last_failure  TEXT NOT NULL,
    failure_count INTEGER NOT NULL,
    error_class   TEXT NOT NULL,
    signature     TEXT NOT NULL,
    last_message  TEXT NOT NULL,
    reprocessable BOOLEAN NOT NULL,
    manual_review BOOLEAN NOT NULL,
    PRIMARY KEY (job_id, key),
    FOREIGN KEY (job_id, key) REFERENCES work_items (job_id, key) ON DELETE CASCADE
);
CREATE INDEX dlq_items_first_failure ON dlq_items (first_failure);

CREATE TABLE events (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    at     TEXT NOT NULL,
    kind   TEXT NOT NULL,
    data   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- The SQLite job lock (PostgreSQL uses session advisory locks instead): one row per held job,
-- renewed by the holder's heartbeat and taken over once the heartbeat is older than the lease.
CREATE TABLE job_locks (
    job_id       TEXT PRIMARY KEY NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    holder_id    TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    instance     TEXT,
    acquired_at  TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
