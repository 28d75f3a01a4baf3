-- Many machines (README "Many machines"): workers claim a job's items with FOR UPDATE SKIP
-- LOCKED; each claim is a lease renewed by heartbeat and carries an epoch that fences the
-- claimer's writes. Commits travel through the job's git remote; logs and transcripts of
-- attempts run elsewhere are stored here so the coordinator's machine can show them.

-- The job's git remote (set: the job runs with workers), and whether workers may claim now.
ALTER TABLE jobs ADD COLUMN remote_url TEXT;
ALTER TABLE jobs ADD COLUMN open_to_workers BOOLEAN NOT NULL DEFAULT FALSE;

-- The current claim of an item: who holds it, until when, and its epoch (bumped by every claim
-- and by every take-back, so a claimer whose lease ran out cannot record anything).
ALTER TABLE work_items ADD COLUMN claimed_by TEXT;
ALTER TABLE work_items ADD COLUMN claim_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE work_items ADD COLUMN lease_expires_at TIMESTAMPTZ;
CREATE INDEX work_items_claimable ON work_items (job_id, status, position);

-- The machine that ran an attempt (None: the job's own process, before workers existed).
ALTER TABLE attempts ADD COLUMN machine TEXT;

-- Text files of an attempt run on another machine: its log (`log`) and its agent transcripts
-- (by the path agent_runs.transcript names).
CREATE TABLE attempt_files (
    job_id  UUID NOT NULL,
    key     TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    name    TEXT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (job_id, key, attempt, name),
    FOREIGN KEY (job_id, key) REFERENCES work_items (job_id, key) ON DELETE CASCADE
);
