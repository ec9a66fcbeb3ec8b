-- identity: tenants, users, memberships, API keys. (audit_events and
-- idempotency_keys come from the migrator's base, before this file.)
--
-- Every tenant table: tenant_id leads the primary key and every unique key and
-- foreign key; mosaic_meta.fence() enables and forces RLS (the owner is fenced
-- too) with the tenant policy, which reads the transaction-local tenant once
-- per statement ((SELECT ...) is an InitPlan), and NULLIF turns the '' a
-- finished SET LOCAL leaves behind into NULL, so "no tenant set" means "no
-- rows", never an error or all rows.

CREATE TABLE tenants (
    tenant_id    uuid PRIMARY KEY,
    display_name text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    plan         text NOT NULL CHECK (plan IN ('free', 'pro', 'enterprise')),
    settings     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    revision     bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);
SELECT mosaic_meta.fence('tenants');
-- The platform-admin path (ListTenants): a read-only transaction that did
-- SET LOCAL ROLE mosaic_identity_platform. The runtime role is NOINHERIT, so
-- this policy never applies to it otherwise.
CREATE POLICY platform_read ON tenants FOR SELECT TO mosaic_identity_platform USING (true);
GRANT SELECT ON tenants TO mosaic_identity_platform;
CREATE INDEX tenants_live ON tenants (tenant_id) WHERE deleted_at IS NULL;

-- Users are global: one email, many tenants. This table is the documented
-- exception to "tenant_id in every key": a tenant sees a user only through a
-- membership of its own (the SELECT policy), and writes go only through
-- resolve_user(), which returns an id for an email the caller already knows.
CREATE TABLE users (
    user_id    uuid PRIMARY KEY,
    email      text NOT NULL CONSTRAINT users_email_key UNIQUE CHECK (email = lower(email) AND char_length(email) <= 254),
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;

CREATE TABLE memberships (
    tenant_id    uuid NOT NULL REFERENCES tenants (tenant_id),
    user_id      uuid NOT NULL REFERENCES users (user_id),
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    display_name text NOT NULL DEFAULT '' CHECK (char_length(display_name) <= 200),
    revision     bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
SELECT mosaic_meta.fence('memberships');
CREATE INDEX memberships_role ON memberships (tenant_id, role, user_id);

CREATE POLICY visible_through_membership ON users FOR SELECT
    USING (EXISTS (
        SELECT 1 FROM memberships m
        WHERE m.tenant_id = (SELECT NULLIF(current_setting('mosaic.tenant_id', true), '')::uuid)
          AND m.user_id = users.user_id));
CREATE POLICY owner_resolves ON users TO mosaic_owner USING (true) WITH CHECK (true);
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON users FROM mosaic_identity;

-- Find or create the user with this (lowercased) email. SECURITY DEFINER so
-- it can see users outside the caller's tenant; it reveals only the id of an
-- email the caller supplied. Two statements: under READ COMMITTED the SELECT
-- takes a fresh snapshot and sees a row a concurrent caller just committed.
CREATE FUNCTION resolve_user(p_email text, p_candidate uuid) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = identity, pg_temp AS $$
DECLARE
    v uuid;
BEGIN
    INSERT INTO identity.users (user_id, email) VALUES (p_candidate, p_email)
    ON CONFLICT (email) DO NOTHING
    RETURNING user_id INTO v;
    IF v IS NULL THEN
        SELECT user_id INTO v FROM identity.users WHERE email = p_email;
    END IF;
    RETURN v;
END
$$;
REVOKE EXECUTE ON FUNCTION resolve_user(text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION resolve_user(text, uuid) TO mosaic_identity;

CREATE TABLE api_keys (
    tenant_id     uuid NOT NULL REFERENCES tenants (tenant_id),
    api_key_id    uuid NOT NULL,
    display_name  text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    role          text NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    secret_hash   bytea NOT NULL,
    secret_prefix text NOT NULL,
    creator       text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    PRIMARY KEY (tenant_id, api_key_id)
);
SELECT mosaic_meta.fence('api_keys');
