-- The purge (`mosaic purge`) looks, per tenant, for rows soft-deleted before a
-- cutoff (old request_id claims: the base's idempotency_keys_created); these
-- keep it to an index range.
CREATE INDEX companies_deleted ON companies (tenant_id, deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX contacts_deleted ON contacts (tenant_id, deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX deals_deleted ON deals (tenant_id, deleted_at) WHERE deleted_at IS NOT NULL;
