-- crm: audit events and idempotency keys (the CRM resources follow).

CREATE TABLE audit_events (
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
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_events
    USING (tenant_id = (SELECT NULLIF(current_setting('mosaic.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('mosaic.tenant_id', true), '')::uuid));
CREATE INDEX audit_events_resource ON audit_events (tenant_id, resource_type, resource_id, event_id DESC);
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM mosaic_crm;

CREATE TABLE idempotency_keys (
    tenant_id    uuid NOT NULL,
    method       text NOT NULL,
    request_id   uuid NOT NULL,
    request_hash bytea NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, method, request_id)
);
ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON idempotency_keys
    USING (tenant_id = (SELECT NULLIF(current_setting('mosaic.tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('mosaic.tenant_id', true), '')::uuid));
