-- The delivery that queued a request. Unique, so the one statement that queues a delivery's
-- work also deduplicates it (webhook_deliveries stays the record of what arrived, and still
-- answers for deliveries recorded before this column existed).
ALTER TABLE requests ADD COLUMN delivery_id TEXT;
CREATE UNIQUE INDEX requests_delivery ON requests (delivery_id);
