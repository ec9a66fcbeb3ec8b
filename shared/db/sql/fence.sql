-- mosaic_meta.fence(table): row-level security for a tenant table in one line
-- of a migration. Enables and forces RLS (so the owner role is fenced too) and
-- gives the table the tenant policy, which reads the transaction-local tenant
-- once per statement ((SELECT ...) is an InitPlan) and turns the '' that a
-- finished SET LOCAL leaves behind into NULL: "no tenant set" means "no rows",
-- never an error and never all rows. Replaced by the migrator on every run;
-- calling it twice on a table is harmless.
CREATE OR REPLACE FUNCTION mosaic_meta.fence(tbl regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $fence$
DECLARE
    tenant text := $$tenant_id = (SELECT NULLIF(current_setting('mosaic.tenant_id', true), '')::uuid)$$;
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = tbl AND polname = 'tenant_isolation') THEN
        EXECUTE format('CREATE POLICY tenant_isolation ON %s USING (%s) WITH CHECK (%s)', tbl, tenant, tenant);
    END IF;
END
$fence$;
ALTER FUNCTION mosaic_meta.fence(regclass) OWNER TO mosaic_owner;
REVOKE ALL ON FUNCTION mosaic_meta.fence(regclass) FROM PUBLIC;
