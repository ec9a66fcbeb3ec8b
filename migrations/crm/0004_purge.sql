-- The purge (`mosaic purge`) looks, per tenant, for rows soft-deleted before a
-- cutoff and for old request_id claims; these keep it to an index range.
CREATE INDEX companies_deleted ON companies (tenant_id, deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX contacts_deleted ON contacts (tenant_id, deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX deals_deleted ON deals (tenant_id, deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX idempotency_keys_created ON idempotency_keys (tenant_id, created_at);
