-- Many machines: the same columns as migrations/postgres/0006_workers.sql, so both backends
-- keep one schema. Only PostgreSQL runs workers (`prodigy run --workers` on SQLite is refused);
-- here the columns stay at their defaults.

ALTER TABLE jobs ADD COLUMN remote_url TEXT;
ALTER TABLE jobs ADD COLUMN open_to_workers BOOLEAN NOT NULL DEFAULT FALSE;

ALTER TABLE work_items ADD COLUMN claimed_by TEXT;
ALTER TABLE work_items ADD COLUMN claim_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE work_items ADD COLUMN lease_expires_at TEXT;
CREATE INDEX work_items_claimable ON work_items (job_id, status, position);

ALTER TABLE attempts ADD COLUMN machine TEXT;

CREATE TABLE attempt_files (
    job_id  TEXT NOT NULL,
    key     TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    name    TEXT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (job_id, key, attempt, name),
    FOREIGN KEY (job_id, key) REFERENCES work_items (job_id, key) ON DELETE CASCADE
);
