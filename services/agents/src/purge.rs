//! The purge: what soft delete promises to remove (`mosaic_db::purge`).
//! Documents, workflows and agents go `RETENTION` (30 days) after
//! `deleted_at`, `request_id` claims after `REQUEST_RETENTION`.
//!
//! What goes with a purged row is what its foreign keys say (see
//! `migrations/agents/0001_init.sql`): a workflow takes its executions; a
//! purged agent's documents keep existing without it (`agent_id` cleared).

use mosaic_db::purge::Expiring;

/// Documents first: they point at agents.
pub(crate) const TABLES: &[Expiring] = &[
    Expiring {
        table: "documents",
        id_column: "document_id",
        kind: "document",
        extra: "",
    },
    Expiring {
        table: "workflows",
        id_column: "workflow_id",
        kind: "workflow",
        extra: "",
    },
    Expiring {
        table: "agents",
        id_column: "agent_id",
        kind: "agent",
        extra: "",
    },
];
