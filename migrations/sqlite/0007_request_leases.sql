-- Requests recovered across instances: the same columns as
-- migrations/postgres/0007_request_leases.sql (SQLite is one process's database; its leases
-- are judged by that process's clock).
ALTER TABLE requests ADD COLUMN lease_expires_at TEXT;
ALTER TABLE requests ADD COLUMN not_before TEXT;
ALTER TABLE requests ADD COLUMN last_error TEXT;
