-- Approvals: actions an agent drafts that a person approves before they run.
--
-- state is what was last written. Two states are also read from the clock,
-- so no sweeper has to run for them (the service's select list says so):
-- a 'pending' row past expires_at reads as 'expired', and an 'executing' row
-- whose lease ran out reads as 'approved' (claimable again). Every transition
-- is one conditional UPDATE under the row's lock (see the service).
CREATE TABLE actions (
    tenant_id        uuid NOT NULL,
    action_id        uuid NOT NULL,
    agent_id         uuid,
    kind             text NOT NULL CHECK (kind IN
                     ('send_email', 'update_deal_stage', 'create_task', 'post_message', 'custom')),
    parameters       jsonb NOT NULL CHECK (jsonb_typeof(parameters) = 'object'),
    -- The subject lives in another service (crm, conversations): no foreign
    -- key; ClearSubject clears it when the subject is deleted.
    subject_type     text CHECK (subject_type IN ('conversation', 'contact', 'deal', 'alert')),
    subject_id       uuid,
    reason           text NOT NULL CHECK (char_length(reason) BETWEEN 1 AND 4000),
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN
                     ('pending', 'approved', 'rejected', 'executing', 'succeeded', 'failed', 'expired')),
    expires_at       timestamptz NOT NULL,
    decided_by       text,
    decided_at       timestamptz,
    decision_note    text NOT NULL DEFAULT '' CHECK (char_length(decision_note) <= 2000),
    parameters_diff  jsonb CHECK (parameters_diff IS NULL OR jsonb_typeof(parameters_diff) = 'object'),
    claim_id         uuid,
    lease_expires_at timestamptz,
    attempt_count    integer NOT NULL DEFAULT 0,
    result           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(result) = 'object'),
    error            text NOT NULL DEFAULT '' CHECK (char_length(error) <= 2000),
    revision         bigint NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT actions_pkey PRIMARY KEY (tenant_id, action_id),
    CONSTRAINT actions_agent_fk FOREIGN KEY (tenant_id, agent_id)
        REFERENCES agents (tenant_id, agent_id) ON DELETE SET NULL (agent_id),
    CONSTRAINT actions_subject_whole CHECK ((subject_type IS NULL) = (subject_id IS NULL)),
    CONSTRAINT actions_claim_whole CHECK (
        (state = 'executing') = (claim_id IS NOT NULL)
        AND (claim_id IS NULL) = (lease_expires_at IS NULL)),
    CONSTRAINT actions_decided CHECK (
        (state IN ('pending', 'expired')) = (decided_at IS NULL)
        AND (decided_at IS NULL) = (decided_by IS NULL))
);
SELECT mosaic_meta.fence('actions');
-- ListActions pages in action_id (UUIDv7: creation) order, by the primary
-- key or, filtered by agent or state, by these.
CREATE INDEX actions_agent ON actions (tenant_id, agent_id, action_id)
    WHERE agent_id IS NOT NULL;
CREATE INDEX actions_state ON actions (tenant_id, state, action_id);
CREATE INDEX actions_subject ON actions (tenant_id, subject_type, subject_id)
    WHERE subject_id IS NOT NULL;
-- The executor's queue, two ways in (as documents'): approved rows in order
-- of approval, and executing rows by lease, to find those whose lease ran out.
CREATE INDEX actions_approved ON actions (tenant_id, decided_at, action_id)
    WHERE state = 'approved';
CREATE INDEX actions_leases ON actions (tenant_id, lease_expires_at)
    WHERE state = 'executing';
