-- The purge (`mosaic purge`) removes request_id claims older than their
-- retention, per tenant.
CREATE INDEX idempotency_keys_created ON idempotency_keys (tenant_id, created_at);
