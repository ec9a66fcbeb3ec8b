-- The credentials vault: a tenant's connections (integration credentials) and
-- the data keys their secrets are encrypted with (envelope encryption).
--
-- tenant_keys: each tenant's data keys, one row per key version, each stored
-- only wrapped (AEAD-sealed) by a master key that never reaches the database
-- (`MOSAIC_VAULT_MASTER_KEY`; in production a KMS); `master_key_id` names the
-- master key that wrapped it, so a master-key rotation re-wraps row by row.
-- The newest version encrypts; older ones stay until the tenant's data-key
-- rotation has re-encrypted every secret under them (the foreign key below
-- keeps a version that a secret still uses).
CREATE TABLE tenant_keys (
    tenant_id     uuid NOT NULL,
    key_version   integer NOT NULL CHECK (key_version >= 1),
    wrapped_key   bytea NOT NULL CHECK (octet_length(wrapped_key) BETWEEN 40 AND 1024),
    master_key_id text NOT NULL CHECK (char_length(master_key_id) BETWEEN 1 AND 200),
    created_at    timestamptz NOT NULL DEFAULT now(),
    wrapped_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenant_keys_pkey PRIMARY KEY (tenant_id, key_version)
);
SELECT mosaic_meta.fence('tenant_keys');
-- The operator path (the startup check of the master key, the master-key
-- rotation's scan): which master keys wrap which data keys, across tenants,
-- read-only, as identity's platform role (as ListTenants reads tenants).
CREATE POLICY platform_read ON tenant_keys FOR SELECT TO mosaic_identity_platform USING (true);
GRANT SELECT (tenant_id, key_version, master_key_id) ON tenant_keys TO mosaic_identity_platform;
CREATE INDEX tenant_keys_master ON tenant_keys (master_key_id);

-- Connections. The secret is only ever here as `secret_ciphertext`: a nonce
-- and the AEAD ciphertext under the tenant's data key `key_version`, with
-- associated data binding the tenant, the connection and `secret_version`, so
-- a ciphertext copied to another row or tenant does not decrypt.
CREATE TABLE connections (
    tenant_id          uuid NOT NULL,
    connection_id      uuid NOT NULL,
    provider           text NOT NULL CHECK (provider IN
                       ('hubspot', 'salesforce', 'slack', 'webhook', 'pipedrive', 'zendesk', 'intercom', 'custom')),
    display_name       text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    scopes             text[] NOT NULL DEFAULT '{}' CHECK (cardinality(scopes) <= 64),
    status             text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'needs_reauth')),
    metadata           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    secret_ciphertext  bytea NOT NULL CHECK (octet_length(secret_ciphertext) BETWEEN 41 AND 17000),
    secret_version     bigint NOT NULL DEFAULT 1 CHECK (secret_version >= 1),
    key_version        integer NOT NULL,
    secret_updated_at  timestamptz NOT NULL DEFAULT now(),
    revision           bigint NOT NULL DEFAULT 1,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    CONSTRAINT connections_pkey PRIMARY KEY (tenant_id, connection_id),
    CONSTRAINT connections_key_fk FOREIGN KEY (tenant_id, key_version)
        REFERENCES tenant_keys (tenant_id, key_version)
);
SELECT mosaic_meta.fence('connections');
CREATE INDEX connections_provider ON connections (tenant_id, provider, connection_id);
-- A data-key rotation walks the secrets still under an older key version.
CREATE INDEX connections_key_version ON connections (tenant_id, key_version, connection_id);
