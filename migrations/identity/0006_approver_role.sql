-- The tenant setting agents' approvals follow: which role may approve or
-- reject an AI-drafted action (`settings.approvals.approver_role`: member,
-- admin or owner; identity checks it on write; unset means admin). Kept as
-- its own column so the access reader, which every process has, may read it
-- and nothing else of the settings.
ALTER TABLE tenants ADD COLUMN approver_role text
    GENERATED ALWAYS AS (settings #>> '{approvals,approver_role}') STORED;
GRANT SELECT (approver_role) ON tenants TO mosaic_access;
