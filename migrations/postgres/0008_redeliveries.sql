-- Deliveries whose redelivery `prodigy serve` asked GitHub for (missed-delivery recovery): one
-- row per delivery guid (X-GitHub-Delivery), so a guid is asked for once, by one replica.
CREATE TABLE webhook_redeliveries (
    guid         TEXT PRIMARY KEY,          -- X-GitHub-Delivery of the missed delivery
    delivery_id  BIGINT NOT NULL,           -- GitHub's id of the attempt asked to be redelivered
    event        TEXT NOT NULL,
    action       TEXT,
    delivered_at TIMESTAMPTZ NOT NULL,      -- when GitHub's failed attempt was made
    requested_at TIMESTAMPTZ NOT NULL,
    requested_by TEXT NOT NULL,             -- the instance that asked
    -- requesting | requested | failed: <reason> (asked again by a later pass, up to 3 times)
    outcome      TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 1
);
