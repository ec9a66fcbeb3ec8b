-- billing: one credit account per tenant, its append-only ledger, and holds.
-- audit_events and idempotency_keys come from the migrator's base.
--
-- Credits are whole numbers (bigint), never floats. The database itself
-- refuses a negative available amount (accounts_available_nonnegative), and
-- the service changes an account only with conditional UPDATEs
-- (`... WHERE balance - held >= $n`) in the same statement as the ledger
-- insert, so concurrent consumers cannot overdraw it.
--
-- Every table leads its keys with tenant_id and is fenced by
-- mosaic_meta.fence(). The ledger is append-only for the runtime role: it may
-- INSERT and SELECT entries, never UPDATE or DELETE them (a mistake is
-- corrected by a new entry).

CREATE TABLE accounts (
    tenant_id  uuid NOT NULL,
    -- Settled credits: the sum of the ledger's amounts.
    balance    bigint NOT NULL DEFAULT 0,
    -- Credits reserved by pending holds: the sum of the ledger's held changes.
    held       bigint NOT NULL DEFAULT 0,
    -- The seq of the account's last ledger entry: each change takes the next.
    entries    bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_pkey PRIMARY KEY (tenant_id),
    CONSTRAINT accounts_held_nonnegative CHECK (held >= 0),
    CONSTRAINT accounts_available_nonnegative CHECK (balance - held >= 0),
    CONSTRAINT accounts_balance_max CHECK (balance <= 1000000000000000000)
);
SELECT mosaic_meta.fence('accounts');

CREATE TABLE ledger_entries (
    tenant_id       uuid NOT NULL,
    -- 1, 2, 3, ... per account, in the order the entries took effect (each
    -- took the account's row lock to get its number).
    seq             bigint NOT NULL CHECK (seq > 0),
    entry_id        uuid NOT NULL,
    kind            text NOT NULL,
    amount          bigint NOT NULL,
    held_change     bigint NOT NULL DEFAULT 0,
    balance_after   bigint NOT NULL,
    held_after      bigint NOT NULL,
    -- Unique per tenant: a key has at most one effect. NULL for releases.
    idempotency_key text CHECK (char_length(idempotency_key) BETWEEN 1 AND 128),
    reference       text NOT NULL DEFAULT '' CHECK (char_length(reference) <= 200),
    hold_id         uuid,
    refund_of       uuid,
    actor           text NOT NULL,
    request_id      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_entries_pkey PRIMARY KEY (tenant_id, seq),
    CONSTRAINT ledger_entries_account_fk FOREIGN KEY (tenant_id) REFERENCES accounts (tenant_id),
    CONSTRAINT ledger_entries_after CHECK (held_after >= 0 AND balance_after - held_after >= 0),
    -- What each kind may do to the balance and the held amount.
    CONSTRAINT ledger_entries_kind CHECK (
        CASE kind
            WHEN 'top_up'      THEN amount > 0 AND held_change = 0
            WHEN 'consumption' THEN amount < 0 AND held_change = 0
            WHEN 'hold'        THEN amount = 0 AND held_change > 0 AND hold_id IS NOT NULL
            WHEN 'capture'     THEN amount < 0 AND held_change <= amount AND hold_id IS NOT NULL
            WHEN 'release'     THEN amount = 0 AND held_change < 0 AND hold_id IS NOT NULL
            WHEN 'refund'      THEN amount > 0 AND held_change = 0 AND refund_of IS NOT NULL
            WHEN 'adjustment'  THEN amount <> 0 AND held_change = 0
            ELSE false
        END),
    CONSTRAINT ledger_entries_refund_only CHECK (refund_of IS NULL OR kind = 'refund')
);
SELECT mosaic_meta.fence('ledger_entries');
CREATE UNIQUE INDEX ledger_entries_entry_id ON ledger_entries (tenant_id, entry_id);
CREATE UNIQUE INDEX ledger_entries_key ON ledger_entries (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_refund_fk
    FOREIGN KEY (tenant_id, refund_of) REFERENCES ledger_entries (tenant_id, entry_id);
CREATE INDEX ledger_entries_hold ON ledger_entries (tenant_id, hold_id) WHERE hold_id IS NOT NULL;
CREATE INDEX ledger_entries_refunds ON ledger_entries (tenant_id, refund_of) WHERE refund_of IS NOT NULL;
CREATE INDEX ledger_entries_time ON ledger_entries (tenant_id, created_at);
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries FROM mosaic_billing;

-- Two-phase holds (TigerBeetle's pending transfers): pending until captured,
-- released, or expired by the sweeper; a hold resolves once (the resolving
-- UPDATE requires status = 'pending').
CREATE TABLE holds (
    tenant_id       uuid NOT NULL,
    hold_id         uuid NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'captured', 'released', 'expired')),
    captured        bigint NOT NULL DEFAULT 0 CHECK (captured >= 0 AND captured <= amount),
    idempotency_key text NOT NULL,
    reference       text NOT NULL DEFAULT '',
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    CONSTRAINT holds_pkey PRIMARY KEY (tenant_id, hold_id),
    CONSTRAINT holds_account_fk FOREIGN KEY (tenant_id) REFERENCES accounts (tenant_id),
    CONSTRAINT holds_resolved CHECK ((status = 'pending') = (resolved_at IS NULL)),
    CONSTRAINT holds_captured CHECK ((status = 'captured') = (captured > 0))
);
SELECT mosaic_meta.fence('holds');
-- The sweeper's scan, across tenants (through mosaic_billing_platform).
CREATE INDEX holds_expiring ON holds (expires_at) WHERE status = 'pending';

-- Accounts and holds are never removed.
REVOKE DELETE, TRUNCATE ON accounts FROM mosaic_billing;
REVOKE DELETE, TRUNCATE ON holds FROM mosaic_billing;

-- The cross-tenant reads (the hold sweeper finding expired holds, Reconcile
-- of every account): a read-only transaction that did SET LOCAL ROLE
-- mosaic_billing_platform. The runtime role is NOINHERIT, so these rights
-- apply only after that switch.
CREATE POLICY platform_read ON accounts FOR SELECT TO mosaic_billing_platform USING (true);
CREATE POLICY platform_read ON ledger_entries FOR SELECT TO mosaic_billing_platform USING (true);
CREATE POLICY platform_read ON holds FOR SELECT TO mosaic_billing_platform USING (true);
GRANT SELECT ON accounts, ledger_entries, holds TO mosaic_billing_platform;
