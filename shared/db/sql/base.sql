-- Version 0 of every service schema: the tables mosaic-db's own code writes
-- (src/audit.rs, src/idempotency.rs). Every statement is idempotent, so a
-- schema whose first migrations made these tables before the base existed
-- takes it as a no-op. {runtime_role} is the schema's runtime role.

-- Every mutation's audit event, written in the mutation's transaction;
-- append-only for the service.
CREATE TABLE IF NOT EXISTS audit_events (
    tenant_id     uuid NOT NULL,
    event_id      uuid NOT NULL,
    actor         text NOT NULL,
    action        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    request_id    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    details       jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, event_id)
);
SELECT mosaic_meta.fence('audit_events');
CREATE INDEX IF NOT EXISTS audit_events_resource
    ON audit_events (tenant_id, resource_type, resource_id, event_id DESC);
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM {runtime_role};

-- request_id idempotency (AIP-155): the claim and the first response. The
-- nil tenant is the platform scope (identity's CreateTenant, before the
-- tenant exists). The purge removes claims past their retention by
-- idempotency_keys_created.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant_id    uuid NOT NULL,
    method       text NOT NULL,
    request_id   uuid NOT NULL,
    request_hash bytea NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, method, request_id)
);
SELECT mosaic_meta.fence('idempotency_keys');
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (tenant_id, created_at);
