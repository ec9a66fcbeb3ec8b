-- agents: agent configs (with their public keys), knowledge-base documents
-- and their worker queue, workflows and their executions. The migrator's base
-- (shared/db/sql/base.sql) adds audit_events and idempotency_keys.
--
-- Conventions as in crm: tenant_id leads every primary key, unique index and
-- foreign key; every table is fenced by mosaic_meta.fence(); "unique among
-- live rows" is a partial unique index; constraint names are stable (the
-- service maps them to the field at fault). Soft-deleted rows are eligible
-- for purging 30 days after deleted_at.

CREATE TABLE agents (
    tenant_id              uuid NOT NULL,
    agent_id               uuid NOT NULL,
    display_name           text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    system_prompt          text NOT NULL DEFAULT '' CHECK (octet_length(system_prompt) <= 32768),
    model                  text NOT NULL CHECK (model ~ '^[A-Za-z0-9._:/-]{1,100}$'),
    -- Hundredths: 0.70 is 70. An integer, so what is written is what is read.
    temperature_centi      smallint NOT NULL CHECK (temperature_centi BETWEEN 0 AND 200),
    voice_settings         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(voice_settings) = 'object'),
    enabled                boolean NOT NULL DEFAULT true,
    metadata               jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    -- The public key is 256 random bits made by the service; only its SHA-256
    -- is kept, with a prefix to tell keys apart.
    public_key_hash        bytea CHECK (octet_length(public_key_hash) = 32),
    public_key_prefix      text,
    public_key_created_at  timestamptz,
    revision               bigint NOT NULL DEFAULT 1,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    deleted_at             timestamptz,
    CONSTRAINT agents_pkey PRIMARY KEY (tenant_id, agent_id),
    CONSTRAINT agents_public_key_whole CHECK (
        (public_key_hash IS NULL) = (public_key_prefix IS NULL)
        AND (public_key_hash IS NULL) = (public_key_created_at IS NULL))
);
SELECT mosaic_meta.fence('agents');
CREATE INDEX agents_model ON agents (tenant_id, model, agent_id);
-- Unique while present. The lookup by key alone (below) uses the second
-- index: it has no tenant to lead with.
CREATE UNIQUE INDEX agents_public_key_live ON agents (tenant_id, public_key_hash)
    WHERE public_key_hash IS NOT NULL;
CREATE INDEX agents_public_key_lookup ON agents (public_key_hash)
    WHERE public_key_hash IS NOT NULL;

-- The one cross-tenant read of agents (the documented exception, as
-- identity.resolve_user is identity's): a public key's SHA-256 to its
-- tenant, agent and public settings, for an edge service that has no tenant
-- yet. SECURITY DEFINER runs it as the schema owner, which RLS still fences
-- (FORCE), except for the policy below that lets it see agents with a key.
-- It returns a row only for a live, enabled agent; the service checks that
-- the tenant is not deleted (identity's table is not agents' to read). 256
-- random bits make two tenants holding one hash impossible in practice; the
-- function returns nothing rather than pick one if it ever happened.
CREATE POLICY public_key_lookup ON agents FOR SELECT TO mosaic_owner
    USING (public_key_hash IS NOT NULL);
CREATE FUNCTION lookup_public_key(p_hash bytea)
RETURNS TABLE (tenant_id uuid, agent_id uuid, display_name text, voice_settings jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = agents, pg_temp AS $$
    SELECT a.tenant_id, a.agent_id, a.display_name, a.voice_settings
    FROM agents.agents a
    WHERE a.public_key_hash = p_hash AND a.enabled AND a.deleted_at IS NULL
      AND (SELECT count(*) FROM agents.agents b WHERE b.public_key_hash = p_hash) = 1
$$;
REVOKE EXECUTE ON FUNCTION lookup_public_key(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lookup_public_key(bytea) TO mosaic_agents;

-- Knowledge-base documents and their worker queue. status is what was last
-- written; a 'processing' row whose lease ran out reads as 'pending' (the
-- service's select list says so) and is claimable again, so a crashed worker
-- never strands a document and no sweeper is needed.
CREATE TABLE documents (
    tenant_id        uuid NOT NULL,
    document_id      uuid NOT NULL,
    agent_id         uuid,
    display_name     text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    source_uri       text NOT NULL CHECK (char_length(source_uri) BETWEEN 1 AND 2048),
    metadata         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    claim_id         uuid,
    lease_expires_at timestamptz,
    attempt_count    integer NOT NULL DEFAULT 0,
    chunk_count      integer NOT NULL DEFAULT 0 CHECK (chunk_count BETWEEN 0 AND 10000000),
    vector_count     integer NOT NULL DEFAULT 0 CHECK (vector_count BETWEEN 0 AND 10000000),
    error            text NOT NULL DEFAULT '' CHECK (char_length(error) <= 2000),
    revision         bigint NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    CONSTRAINT documents_pkey PRIMARY KEY (tenant_id, document_id),
    CONSTRAINT documents_agent_fk FOREIGN KEY (tenant_id, agent_id)
        REFERENCES agents (tenant_id, agent_id) ON DELETE SET NULL (agent_id),
    CONSTRAINT documents_claim_whole CHECK (
        (status = 'processing') = (claim_id IS NOT NULL)
        AND (claim_id IS NULL) = (lease_expires_at IS NULL))
);
SELECT mosaic_meta.fence('documents');
-- The queue, two ways in: pending rows in creation order, and claimed rows
-- by lease, to find those whose lease ran out. A claimed row leaves the first
-- index, so a claim never walks past the rows claimed before it. The first is
-- in (created_at, document_id) order, which no other index gives: the planner
-- cannot prefer the primary key with a filter (it did, while the statistics
-- said every row was pending, and read 73,000 claimed rows per claim).
CREATE INDEX documents_pending ON documents (tenant_id, created_at, document_id)
    WHERE status = 'pending' AND deleted_at IS NULL;
CREATE INDEX documents_leases ON documents (tenant_id, lease_expires_at)
    WHERE status = 'processing';
CREATE INDEX documents_agent ON documents (tenant_id, agent_id, document_id)
    WHERE agent_id IS NOT NULL;

CREATE TABLE workflows (
    tenant_id      uuid NOT NULL,
    workflow_id    uuid NOT NULL,
    display_name   text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    description    text NOT NULL DEFAULT '' CHECK (char_length(description) <= 2000),
    trigger_type   text NOT NULL CHECK (trigger_type IN
                   ('message_received', 'conversation_started', 'deal_stage_changed', 'schedule', 'webhook')),
    trigger_config jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(trigger_config) = 'object'),
    -- Checked by the service (a DAG of at most 500 nodes and 2000 edges).
    nodes          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(nodes) = 'array'),
    edges          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(edges) = 'array'),
    enabled        boolean NOT NULL DEFAULT false,
    revision       bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz,
    CONSTRAINT workflows_pkey PRIMARY KEY (tenant_id, workflow_id)
);
SELECT mosaic_meta.fence('workflows');

-- Executions are records of what ran: append-only for the service.
CREATE TABLE executions (
    tenant_id    uuid NOT NULL,
    execution_id uuid NOT NULL,
    workflow_id  uuid NOT NULL,
    status       text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    input        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(input) = 'object'),
    output       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(output) = 'object'),
    error        text NOT NULL DEFAULT '' CHECK (char_length(error) <= 2000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT executions_pkey PRIMARY KEY (tenant_id, execution_id),
    CONSTRAINT executions_workflow_fk FOREIGN KEY (tenant_id, workflow_id)
        REFERENCES workflows (tenant_id, workflow_id) ON DELETE CASCADE,
    CONSTRAINT executions_times CHECK (
        (status = 'running') = (finished_at IS NULL) AND finished_at >= started_at)
);
SELECT mosaic_meta.fence('executions');
CREATE INDEX executions_workflow ON executions (tenant_id, workflow_id, execution_id DESC);
REVOKE UPDATE, DELETE, TRUNCATE ON executions FROM mosaic_agents;
