-- crm starts with what the migrator's base provides: audit_events and
-- idempotency_keys (shared/db/src/migrate.rs). This version is kept, empty,
-- so the numbering of applied migrations stays as it was; the resources
-- follow in 0002.
SELECT 1;
