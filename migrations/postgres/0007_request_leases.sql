-- Requests recovered across instances (README "Reliability"): a claim is a lease renewed by
-- its holder's heartbeat, judged by the database's clock; a claim whose lease ran out is taken
-- back by any instance. `attempts` (bumped by every claim) fences a holder's writes. A request
-- that failed on a transient error waits in the queue until `not_before`, with its error.
ALTER TABLE requests ADD COLUMN lease_expires_at TIMESTAMPTZ;
ALTER TABLE requests ADD COLUMN not_before TIMESTAMPTZ;
ALTER TABLE requests ADD COLUMN last_error TEXT;
