-- The purge (`mosaic purge`) removes request_id claims older than their
-- retention, per tenant. The index it needs, idempotency_keys_created, is
-- now part of the migrator's base (shared/db/src/migrate.rs), which every
-- schema gets before its own migrations; this version is kept, empty, so the
-- numbering of applied migrations stays as it was.
SELECT 1;
