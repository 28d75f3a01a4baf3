-- State of `prodigy serve`: webhook deliveries (a redelivery is a no-op) and the runner's queue.

CREATE TABLE webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,             -- X-GitHub-Delivery
    event       TEXT NOT NULL,
    action      TEXT,
    received_at TIMESTAMPTZ NOT NULL,
    outcome     TEXT NOT NULL
);

CREATE TABLE requests (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT NOT NULL,
    payload     JSONB NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queued',   -- queued | claimed | done | failed
    claimed_by  TEXT,
    message     TEXT,
    attempts    BIGINT NOT NULL DEFAULT 0,
    enqueued_at TIMESTAMPTZ NOT NULL,
    claimed_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ
);
CREATE INDEX requests_queued ON requests (status, id);
