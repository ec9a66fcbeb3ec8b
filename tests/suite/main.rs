//! Black-box tests of the Mosaic suite: it is started once per test binary, on
//! port 0, against the real PostgreSQL, and called through the generated
//! clients. Every test makes its own tenants, so tests run in parallel
//! against one database without cleaning up.

// Tests and their helpers may unwrap: a panic is a clear test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;
/// A MongoDB-wire server of a test's own (shared with the fault card).
#[path = "../support/own_mongo.rs"]
mod own_mongo;
#[path = "../support/ports.rs"]
mod ports;
/// Redis servers of a test's own (shared with `mosaic-cache`'s tests).
#[path = "../../shared/cache/tests/support/mod.rs"]
mod redis_support;

mod access;
mod agents_approvals;
mod agents_cache;
mod agents_configs;
mod agents_documents;
mod agents_support;
mod agents_workflows;
mod auth;
mod billing_bank;
mod billing_catalog;
mod billing_credits;
mod billing_holds;
mod billing_support;
mod catalog;
mod conversations_api;
mod conversations_charges;
mod conversations_messages;
mod conversations_outage;
mod conversations_support;
mod crm_activities;
mod crm_catalog;
mod crm_companies;
mod crm_contacts;
mod crm_deals;
mod crm_import;
mod crm_scores;
mod crm_signals;
mod crm_support;
mod identity_api_keys;
mod identity_members;
mod identity_tenants;
mod identity_vault;
mod migrate;
mod propagation;
mod purge;
mod rate_limit;
mod read_lane;
mod roles;
mod shutdown;
mod traces;
mod write;
