-- Activities and signals are records of what happened: the service appends
-- them and never changes or removes them (like audit_events).
REVOKE UPDATE, DELETE, TRUNCATE ON activities FROM mosaic_crm;
REVOKE UPDATE, DELETE, TRUNCATE ON signals FROM mosaic_crm;
