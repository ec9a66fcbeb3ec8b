-- crm: companies, contacts, deals (+ contact links), activities, signals, scores.
--
-- Conventions (as in identity): tenant_id leads every primary key, unique
-- index and foreign key, so no row can point at another tenant's row (FK
-- checks ignore RLS; a composite key makes that harmless); every table is
-- fenced by mosaic_meta.fence(): ENABLE and FORCE ROW LEVEL SECURITY with the
-- same tenant_isolation policy everywhere. "Unique among live
-- rows" is a partial unique index WHERE deleted_at IS NULL, so a soft-deleted
-- row never blocks a new one and upserts name the same predicate in ON
-- CONFLICT. Constraint and index names are stable: the service maps them to
-- the field at fault (companies_domain_live -> company.domain, ...).
--
-- Soft delete does not fire FK actions; the handlers do in the same
-- transaction what a purge would do through the ON DELETE clauses below
-- (DeleteContact clears deals.primary_contact_id and removes deal links).
-- Soft-deleted rows are eligible for purging 30 days after deleted_at; the
-- purge itself is an operator job (it needs the cross-tenant path).

CREATE TABLE companies (
    tenant_id      uuid NOT NULL,
    company_id     uuid NOT NULL,
    display_name   text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    domain         text CHECK (domain = lower(domain) AND char_length(domain) BETWEEN 1 AND 253),
    external_id    text CHECK (char_length(external_id) BETWEEN 1 AND 128),
    industry       text NOT NULL DEFAULT '' CHECK (char_length(industry) <= 100),
    employee_count integer NOT NULL DEFAULT 0 CHECK (employee_count BETWEEN 0 AND 10000000),
    revision       bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz,
    CONSTRAINT companies_pkey PRIMARY KEY (tenant_id, company_id)
);
SELECT mosaic_meta.fence('companies');
CREATE UNIQUE INDEX companies_domain_live ON companies (tenant_id, domain) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX companies_external_id_live ON companies (tenant_id, external_id) WHERE deleted_at IS NULL;

CREATE TABLE contacts (
    tenant_id  uuid NOT NULL,
    contact_id uuid NOT NULL,
    company_id uuid,
    email      text NOT NULL CHECK (email = lower(email) AND char_length(email) BETWEEN 3 AND 254),
    full_name  text NOT NULL DEFAULT '' CHECK (char_length(full_name) <= 200),
    title      text NOT NULL DEFAULT '' CHECK (char_length(title) <= 200),
    phone      text NOT NULL DEFAULT '' CHECK (char_length(phone) <= 32),
    tags       text[] NOT NULL DEFAULT '{}' CHECK (cardinality(tags) <= 32),
    metadata   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    -- Full-text document: the name, the email as one token, and the email's
    -- parts ('ada.l@example.com' -> ada, l, example, com) so a search for a
    -- name part or a domain finds it. 'simple': names are not stemmed.
    search     tsvector GENERATED ALWAYS AS (
                   to_tsvector('simple', full_name || ' ' || email || ' ' || translate(email, '@.+_-', '     '))
               ) STORED,
    revision   bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    CONSTRAINT contacts_pkey PRIMARY KEY (tenant_id, contact_id),
    CONSTRAINT contacts_company_fk FOREIGN KEY (tenant_id, company_id)
        REFERENCES companies (tenant_id, company_id) ON DELETE SET NULL (company_id)
);
SELECT mosaic_meta.fence('contacts');
CREATE UNIQUE INDEX contacts_email_live ON contacts (tenant_id, email) WHERE deleted_at IS NULL;
CREATE INDEX contacts_company ON contacts (tenant_id, company_id, contact_id) WHERE company_id IS NOT NULL;
-- GIN indexes cannot lead with tenant_id (no btree_gin here); queries add
-- tenant_id = $1 and the planner combines the bitmaps.
CREATE INDEX contacts_tags ON contacts USING gin (tags);
CREATE INDEX contacts_metadata ON contacts USING gin (metadata jsonb_path_ops);
CREATE INDEX contacts_search ON contacts USING gin (search);

CREATE TABLE deals (
    tenant_id           uuid NOT NULL,
    deal_id             uuid NOT NULL,
    company_id          uuid NOT NULL,
    primary_contact_id  uuid,
    display_name        text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    stage               text NOT NULL CHECK (stage IN ('lead', 'qualified', 'proposal', 'negotiation', 'closed_won', 'closed_lost')),
    probability         smallint NOT NULL DEFAULT 0 CHECK (probability BETWEEN 0 AND 100),
    -- Money in minor units of currency_code: integers, never floats.
    value_minor         bigint NOT NULL DEFAULT 0 CHECK (value_minor BETWEEN 0 AND 1000000000000000),
    currency_code       text NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    expected_close_date date,
    revision            bigint NOT NULL DEFAULT 1,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz,
    CONSTRAINT deals_pkey PRIMARY KEY (tenant_id, deal_id),
    CONSTRAINT deals_company_fk FOREIGN KEY (tenant_id, company_id)
        REFERENCES companies (tenant_id, company_id),
    -- PG15 column list: a purged contact clears only the contact reference,
    -- never tenant_id (which is part of other keys) and never the deal.
    CONSTRAINT deals_primary_contact_fk FOREIGN KEY (tenant_id, primary_contact_id)
        REFERENCES contacts (tenant_id, contact_id) ON DELETE SET NULL (primary_contact_id)
);
SELECT mosaic_meta.fence('deals');
CREATE INDEX deals_company ON deals (tenant_id, company_id, deal_id);
CREATE INDEX deals_stage ON deals (tenant_id, stage, deal_id);
CREATE INDEX deals_primary_contact ON deals (tenant_id, primary_contact_id) WHERE primary_contact_id IS NOT NULL;

CREATE TABLE deal_contacts (
    tenant_id  uuid NOT NULL,
    deal_id    uuid NOT NULL,
    contact_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deal_contacts_pkey PRIMARY KEY (tenant_id, deal_id, contact_id),
    CONSTRAINT deal_contacts_deal_fk FOREIGN KEY (tenant_id, deal_id)
        REFERENCES deals (tenant_id, deal_id) ON DELETE CASCADE,
    CONSTRAINT deal_contacts_contact_fk FOREIGN KEY (tenant_id, contact_id)
        REFERENCES contacts (tenant_id, contact_id) ON DELETE CASCADE
);
SELECT mosaic_meta.fence('deal_contacts');
CREATE INDEX deal_contacts_contact ON deal_contacts (tenant_id, contact_id);

-- Activities are a log: inserted, never updated. A purged subject takes its
-- activities with it (ON DELETE CASCADE): SET NULL could leave an activity
-- about nothing, which activities_subject forbids.
CREATE TABLE activities (
    tenant_id   uuid NOT NULL,
    activity_id uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('email', 'call', 'meeting', 'note')),
    company_id  uuid,
    contact_id  uuid,
    deal_id     uuid,
    occurred_at timestamptz NOT NULL,
    summary     text NOT NULL DEFAULT '' CHECK (char_length(summary) <= 1000),
    details     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    actor       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT activities_pkey PRIMARY KEY (tenant_id, activity_id),
    CONSTRAINT activities_subject CHECK (num_nonnulls(company_id, contact_id, deal_id) >= 1),
    CONSTRAINT activities_company_fk FOREIGN KEY (tenant_id, company_id)
        REFERENCES companies (tenant_id, company_id) ON DELETE CASCADE,
    CONSTRAINT activities_contact_fk FOREIGN KEY (tenant_id, contact_id)
        REFERENCES contacts (tenant_id, contact_id) ON DELETE CASCADE,
    CONSTRAINT activities_deal_fk FOREIGN KEY (tenant_id, deal_id)
        REFERENCES deals (tenant_id, deal_id) ON DELETE CASCADE
);
SELECT mosaic_meta.fence('activities');
CREATE INDEX activities_time ON activities (tenant_id, occurred_at DESC, activity_id DESC);
CREATE INDEX activities_company ON activities (tenant_id, company_id, occurred_at DESC, activity_id DESC) WHERE company_id IS NOT NULL;
CREATE INDEX activities_contact ON activities (tenant_id, contact_id, occurred_at DESC, activity_id DESC) WHERE contact_id IS NOT NULL;
CREATE INDEX activities_deal ON activities (tenant_id, deal_id, occurred_at DESC, activity_id DESC) WHERE deal_id IS NOT NULL;

-- Signals are stored once: by (provider, event_id), and by signal_hash when
-- the provider sends one. IngestSignals inserts with ON CONFLICT DO NOTHING,
-- which covers both keys in the same statement.
CREATE TABLE signals (
    tenant_id   uuid NOT NULL,
    signal_id   uuid NOT NULL,
    provider    text NOT NULL CHECK (provider ~ '^[a-z0-9._-]{1,64}$'),
    event_id    text NOT NULL CHECK (char_length(event_id) BETWEEN 1 AND 200),
    signal_type text NOT NULL CHECK (signal_type ~ '^[a-z0-9._-]{1,64}$'),
    signal_hash text CHECK (char_length(signal_hash) BETWEEN 1 AND 128),
    company_id  uuid,
    contact_id  uuid,
    payload     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    occurred_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT signals_pkey PRIMARY KEY (tenant_id, signal_id),
    CONSTRAINT signals_event_key UNIQUE (tenant_id, provider, event_id),
    CONSTRAINT signals_company_fk FOREIGN KEY (tenant_id, company_id)
        REFERENCES companies (tenant_id, company_id) ON DELETE SET NULL (company_id),
    CONSTRAINT signals_contact_fk FOREIGN KEY (tenant_id, contact_id)
        REFERENCES contacts (tenant_id, contact_id) ON DELETE SET NULL (contact_id)
);
SELECT mosaic_meta.fence('signals');
CREATE UNIQUE INDEX signals_hash_key ON signals (tenant_id, signal_hash) WHERE signal_hash IS NOT NULL;
CREATE INDEX signals_company ON signals (tenant_id, company_id, signal_id) WHERE company_id IS NOT NULL;
CREATE INDEX signals_contact ON signals (tenant_id, contact_id, signal_id) WHERE contact_id IS NOT NULL;
CREATE INDEX signals_type ON signals (tenant_id, signal_type, signal_id);

-- One row of scores per company.
CREATE TABLE scores (
    tenant_id     uuid NOT NULL,
    company_id    uuid NOT NULL,
    fit           smallint NOT NULL CHECK (fit BETWEEN 0 AND 100),
    intent        smallint NOT NULL CHECK (intent BETWEEN 0 AND 100),
    composite     smallint NOT NULL CHECK (composite BETWEEN 0 AND 100),
    model_version text NOT NULL DEFAULT '' CHECK (char_length(model_version) <= 64),
    computed_at   timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT scores_pkey PRIMARY KEY (tenant_id, company_id),
    CONSTRAINT scores_company_fk FOREIGN KEY (tenant_id, company_id)
        REFERENCES companies (tenant_id, company_id) ON DELETE CASCADE
);
SELECT mosaic_meta.fence('scores');
