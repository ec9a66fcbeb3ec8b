-- The subject outbox: a contact or deal that leaves the database (the purge, or
-- any other DELETE) is written down here by a trigger, in the transaction that
-- deletes it, and crm's subject relay tells agents (ApprovalService.ClearSubject),
-- then removes the row. A crash between the purge and the call loses nothing:
-- the row stays until agents has answered.
CREATE TABLE deleted_subjects (
    tenant_id uuid NOT NULL,
    subject_type text NOT NULL CONSTRAINT deleted_subjects_type CHECK (subject_type IN ('contact', 'deal')),
    subject_id uuid NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    -- Failed deliveries so far, and when the next one is due (a backoff).
    attempts integer NOT NULL DEFAULT 0,
    due_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, subject_type, subject_id)
);
SELECT mosaic_meta.fence('deleted_subjects');
-- The relay's scan, across tenants (through mosaic_crm_platform).
CREATE INDEX deleted_subjects_due ON deleted_subjects (due_at);

-- Runs as the deleting role, under its tenant: the row passes the tenant policy.
CREATE FUNCTION note_deleted_contact() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO deleted_subjects (tenant_id, subject_type, subject_id)
    VALUES (OLD.tenant_id, 'contact', OLD.contact_id)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE FUNCTION note_deleted_deal() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO deleted_subjects (tenant_id, subject_type, subject_id)
    VALUES (OLD.tenant_id, 'deal', OLD.deal_id)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER contacts_deleted_subject AFTER DELETE ON contacts
    FOR EACH ROW EXECUTE FUNCTION note_deleted_contact();
CREATE TRIGGER deals_deleted_subject AFTER DELETE ON deals
    FOR EACH ROW EXECUTE FUNCTION note_deleted_deal();

-- The relay's read of due rows across tenants: a read-only transaction that did
-- SET LOCAL ROLE mosaic_crm_platform (the runtime role is NOINHERIT, so this
-- right applies only after that switch). Deliveries are written back in each
-- tenant's own transaction.
CREATE POLICY platform_read ON deleted_subjects FOR SELECT TO mosaic_crm_platform USING (true);
GRANT SELECT ON deleted_subjects TO mosaic_crm_platform;
