-- What every service needs to know about tenants and tokens, published by
-- identity in the same transaction as the change that causes it, and read by
-- every Mosaic process through the `mosaic_access` login (`mosaic_db::access`):
--
--   tenant_created, tenant_deleted, tenant_restored     a tenant's state
--   principal_revoked (principal = key:<id> | user:<id>) tokens of that
--       principal for that tenant issued at or before `at` are refused
--       (a revoked API key, a removed member, a lowered role)
--
-- Readers follow the log by (xid, seq), taking only rows of transactions older
-- than their snapshot's xmin, so a change that commits late is never skipped.
-- Rows older than the longest token lifetime are purged (`mosaic purge`).
CREATE TABLE access_changes (
    tenant_id uuid NOT NULL,
    seq       bigint GENERATED ALWAYS AS IDENTITY,
    xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    kind      text NOT NULL CHECK (kind IN ('tenant_created', 'tenant_deleted', 'tenant_restored', 'principal_revoked')),
    principal text CHECK ((kind = 'principal_revoked') = (principal IS NOT NULL) AND char_length(principal) <= 200),
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, seq)
);
SELECT mosaic_meta.fence('access_changes');
CREATE INDEX access_changes_feed ON access_changes (xid, seq);
CREATE INDEX access_changes_at ON access_changes (tenant_id, at);
-- Append-only for the service; only the purge removes old rows.
REVOKE UPDATE, TRUNCATE ON access_changes FROM mosaic_identity;

-- The access reader: every row of the log, and of tenants only the id and
-- whether it is deleted (the documented cross-tenant read of the suite).
GRANT USAGE ON SCHEMA identity TO mosaic_access;
CREATE POLICY access_read ON access_changes FOR SELECT TO mosaic_access USING (true);
GRANT SELECT ON access_changes TO mosaic_access;
CREATE POLICY access_read ON tenants FOR SELECT TO mosaic_access USING (true);
GRANT SELECT (tenant_id, deleted_at) ON tenants TO mosaic_access;
