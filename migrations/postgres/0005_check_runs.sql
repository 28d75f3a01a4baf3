-- Every check run a job's reporter created, and whether it is still in progress on GitHub:
-- a run whose process died leaves its check run in progress; the next run of the job (or the
-- next server start) closes it once, claiming the row (status in_progress -> closed).
CREATE TABLE check_runs (
    job_id       UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    id           BIGINT NOT NULL,
    -- The lease epoch of the run that created it: runs of later epochs may close it.
    lease_epoch  BIGINT NOT NULL,
    -- in_progress | completed (by its own run) | closed (by a later run or a server start)
    status       TEXT NOT NULL,
    -- The check run of the run that continues the job, when one does.
    continued_by BIGINT,
    created_at   TIMESTAMPTZ NOT NULL,
    closed_at    TIMESTAMPTZ,
    PRIMARY KEY (job_id, id)
);
CREATE INDEX check_runs_status ON check_runs (status, job_id);
