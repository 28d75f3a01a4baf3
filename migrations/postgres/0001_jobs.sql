-- Core job state; the same tables as migrations/sqlite with native types. The job lock is a
-- session advisory lock, so there is no job_locks table here.

CREATE TABLE jobs (
    id            UUID PRIMARY KEY,                   -- UUID v7
    workflow_path TEXT NOT NULL,
    workflow_text TEXT NOT NULL,
    workflow_name TEXT NOT NULL,
    repo_path     TEXT NOT NULL,
    repo          TEXT,
    pr_number     BIGINT,
    head_sha      TEXT,
    status        TEXT NOT NULL,
    phase         TEXT NOT NULL,
    refs          JSONB NOT NULL DEFAULT '{}',
    vars          JSONB NOT NULL DEFAULT '{}',
    check_run_id  BIGINT,
    error         TEXT,
    -- Bumped by every lock acquisition; every write of job state is conditional on it.
    lease_epoch   BIGINT NOT NULL DEFAULT 0,
    -- Who took the lock last (store::Holder) and when, for "held by ... since ...".
    lock_holder   JSONB,
    locked_since  TIMESTAMPTZ,
    -- Last event sequence number handed out for this job.
    event_seq     BIGINT NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ
);
CREATE INDEX jobs_repo_pr ON jobs (repo, pr_number);

CREATE TABLE work_items (
    job_id     UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    position   BIGINT NOT NULL,
    data       JSONB NOT NULL,
    status     TEXT NOT NULL DEFAULT 'pending',
    attempts   BIGINT NOT NULL DEFAULT 0,
    merged     BOOLEAN NOT NULL DEFAULT FALSE,
    commit_sha TEXT,
    result     JSONB,
    PRIMARY KEY (job_id, key)
);
-- Serves items() in order (position, then key) without a sort.
CREATE INDEX work_items_position ON work_items (job_id, position, key);

-- One row per execution of an item; rows are completed, never replaced.
CREATE TABLE attempts (
    job_id      UUID NOT NULL,
    key         TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
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
    job_id        UUID NOT NULL,
    key           TEXT NOT NULL,
    data          JSONB NOT NULL,
    first_failure TIMESTAMPTZ NOT NULL,
    last_failure  TIMESTAMPTZ NOT NULL,
    failure_count BIGINT NOT NULL,
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
    job_id UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    at     TIMESTAMPTZ NOT NULL,
    kind   TEXT NOT NULL,
    data   JSONB NOT NULL,
    PRIMARY KEY (job_id, seq)
);
