-- A member is known to its tenant by a member id of that tenant, never by the
-- global user id: the same person has unrelated ids in two tenants, and the
-- id (UUIDv7, made by the service when the user joins) tells nothing about
-- the user's other memberships or when their account was first created.
-- Existing memberships get random ids: the column default fills them in the
-- table rewrite (an UPDATE would see no rows under the forced tenant policy),
-- then goes, so every new id comes from the service.
ALTER TABLE memberships ADD COLUMN member_id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE memberships ALTER COLUMN member_id DROP DEFAULT;
CREATE UNIQUE INDEX memberships_member ON memberships (tenant_id, member_id);
