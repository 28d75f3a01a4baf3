-- State of `prodigy serve`: webhook deliveries (a redelivery is a no-op) and the runner's queue.

CREATE TABLE webhook_deliveries (
    delivery_id TEXT PRIMARY KEY NOT NULL,   -- X-GitHub-Delivery
    event       TEXT NOT NULL,
    action      TEXT,
    received_at TEXT NOT NULL,
    outcome     TEXT NOT NULL
);

CREATE TABLE requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queued',   -- queued | claimed | done | failed
    claimed_by  TEXT,
    message     TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    enqueued_at TEXT NOT NULL,
    claimed_at  TEXT,
    finished_at TEXT
);
CREATE INDEX requests_queued ON requests (status, id);
