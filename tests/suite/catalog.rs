//! The database catalog keeps the isolation rules: RLS enabled and forced with
//! a tenant policy on every table of a service schema, tenant_id in every
//! primary, unique and foreign key; runtime roles without privileges beyond
//! their own schema. The documented exception: `identity.users` (global).

use sqlx::Row;

use crate::harness::app;

/// Global tables, each with its own policy (see its migration).
const GLOBAL_TABLES: &[&str] = &["identity.users"];

/// Every service schema of the suite (from `mosaic::SERVICES`).
fn schemas() -> Vec<&'static str> {
    mosaic::SERVICES
        .iter()
        .filter_map(|service| service.schema())
        .map(|schema| schema.name)
        .collect()
}

/// `(runtime role, its schema)` of every service.
fn runtime_roles() -> Vec<(&'static str, &'static str)> {
    mosaic::SERVICES
        .iter()
        .filter_map(|service| service.schema())
        .map(|schema| (schema.role, schema.name))
        .collect()
}

#[tokio::test]
async fn every_table_is_fenced_by_tenant() {
    app();
    let schemas = schemas();
    let mut db = app().admin_db().await;
    let tables = sqlx::query(
        "SELECT n.nspname || '.' || c.relname AS name, c.relrowsecurity, c.relforcerowsecurity, c.oid::int8 AS oid \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1)",
    )
    .bind(&schemas)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(tables.len() >= 6, "identity tables exist");
    let mut problems = Vec::new();
    for t in &tables {
        let name: String = t.get("name");
        let oid: i64 = t.get("oid");
        if !t.get::<bool, _>("relrowsecurity") || !t.get::<bool, _>("relforcerowsecurity") {
            problems.push(format!("{name}: RLS not enabled and forced"));
        }
        if GLOBAL_TABLES.contains(&name.as_str()) {
            continue;
        }
        let policies: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(qual, '') || ' ' || coalesce(with_check, '') FROM pg_policies \
             WHERE schemaname || '.' || tablename = $1 AND 'public' = ANY(roles)",
        )
        .bind(&name)
        .fetch_all(&mut db)
        .await
        .unwrap();
        if !policies.iter().any(|p| {
            p.contains("tenant_id") && p.contains("mosaic.tenant_id") && p.contains("NULLIF")
        }) {
            problems.push(format!("{name}: no tenant policy"));
        }
        // Primary key, unique constraints and unique indexes lead with tenant_id; so do foreign keys.
        let keys: Vec<(String, String)> = sqlx::query_as(
            "SELECT i.indexrelid::regclass::text, a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = $1::oid AND i.indisunique",
        )
        .bind(oid)
        .fetch_all(&mut db)
        .await
        .unwrap();
        for (index, first) in keys {
            if first != "tenant_id" {
                problems.push(format!(
                    "{name}: unique index {index} does not start with tenant_id"
                ));
            }
        }
        let fks: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT conname::text, ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = conrelid AND attnum = ANY(conkey)) \
             FROM pg_constraint WHERE conrelid = $1::oid AND contype = 'f'",
        )
        .bind(oid)
        .fetch_all(&mut db)
        .await
        .unwrap();
        for (fk, cols) in fks {
            let to_global = fk.contains("user_id_fkey") && name == "identity.memberships";
            if !to_global && !cols.iter().any(|c| c == "tenant_id") {
                problems.push(format!("{name}: foreign key {fk} lacks tenant_id"));
            }
        }
    }
    // The only SECURITY DEFINER functions are the documented ones:
    // identity's user resolution and agents' public-key lookup.
    let definers: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.prosecdef AND n.nspname = ANY($1)",
    )
    .bind(&schemas)
    .fetch_all(&mut db)
    .await
    .unwrap();
    let mut definers = definers;
    definers.sort();
    if definers != ["agents.lookup_public_key", "identity.resolve_user"] {
        problems.push(format!(
            "unexpected SECURITY DEFINER functions: {definers:?}"
        ));
    }
    // Views would bypass RLS unless security_invoker.
    let views: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY($1) \
           AND NOT coalesce(c.reloptions @> ARRAY['security_invoker=true'], false)",
    )
    .bind(&schemas)
    .fetch_all(&mut db)
    .await
    .unwrap();
    problems.extend(
        views
            .into_iter()
            .map(|v| format!("{v}: view without security_invoker")),
    );
    assert!(
        problems.is_empty(),
        "catalog problems:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn runtime_roles_are_powerless_outside_their_schema() {
    app();
    let schemas = schemas();
    let mut db = app().admin_db().await;
    for (role, schema) in runtime_roles() {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role)
                .fetch_one(&mut db)
                .await
                .unwrap();
        if !exists {
            continue;
        }
        let (superuser, bypass, inherit): (bool, bool, bool) = sqlx::query_as(
            "SELECT rolsuper, rolbypassrls, rolinherit FROM pg_roles WHERE rolname = $1",
        )
        .bind(role)
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert!(
            !superuser && !bypass && !inherit,
            "{role}: super={superuser} bypassrls={bypass} inherit={inherit}"
        );
        let owned: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid) + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid) \
             + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid) FROM pg_roles r WHERE r.rolname = $1",
        )
        .bind(role)
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!(owned, 0, "{role} owns objects");
        for other in schemas.iter().filter(|other| **other != schema) {
            let usage: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, $2, 'USAGE')")
                .bind(role)
                .bind(other)
                .fetch_one(&mut db)
                .await
                .unwrap_or(false);
            assert!(!usage, "{role} can use schema {other}");
        }
    }
}

/// The access login every process reads the access view with may read the
/// access log, which tenants are deleted and each tenant's approver role
/// (agents' approvals), and nothing else: no other column of
/// `identity.tenants` (not its settings), no other table, no writes, no
/// other schema.
#[tokio::test]
async fn the_access_login_reads_only_the_access_view() {
    app();
    let role = mosaic_db::bootstrap::ACCESS_ROLE;
    let mut db = app().admin_db().await;
    let (superuser, bypass, inherit): (bool, bool, bool) = sqlx::query_as(
        "SELECT rolsuper, rolbypassrls, rolinherit FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_one(&mut db)
    .await
    .expect("the suite bootstraps the access login");
    assert!(
        !superuser && !bypass && !inherit,
        "{role}: super={superuser} bypassrls={bypass} inherit={inherit}"
    );
    let owned: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid) + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid) \
         + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid) FROM pg_roles r WHERE r.rolname = $1",
    )
    .bind(role)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(owned, 0, "{role} owns objects");

    // Every privilege it holds on a table or column of a service schema.
    let held: Vec<String> = sqlx::query_scalar(
        "WITH rel AS (SELECT c.oid, n.nspname || '.' || c.relname AS name FROM pg_class c \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
           WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND n.nspname = ANY($2)), \
         priv AS (SELECT unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p) \
         SELECT rel.name || ' ' || priv.p FROM rel, priv WHERE has_table_privilege($1, rel.oid, priv.p) \
         UNION ALL \
         SELECT rel.name || '(' || a.attname || ') ' || priv.p FROM rel \
           JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped, priv \
         WHERE priv.p IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES') \
           AND NOT has_table_privilege($1, rel.oid, priv.p) \
           AND has_column_privilege($1, rel.oid, a.attnum, priv.p) \
         ORDER BY 1",
    )
    .bind(role)
    .bind(schemas())
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(
        held,
        [
            "identity.access_changes SELECT",
            "identity.tenants(approver_role) SELECT",
            "identity.tenants(deleted_at) SELECT",
            "identity.tenants(tenant_id) SELECT",
        ],
        "{role} holds more than the access view needs"
    );
    for schema in schemas().into_iter().filter(|s| *s != "identity") {
        let usage: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, $2, 'USAGE')")
            .bind(role)
            .bind(schema)
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert!(!usage, "{role} can use schema {schema}");
    }
}

#[tokio::test]
async fn no_tenant_means_no_rows() {
    let t = app().new_tenant().await;
    let mut conn = app().identity_role_db().await;
    for table in [
        "tenants",
        "memberships",
        "users",
        "api_keys",
        "audit_events",
        "idempotency_keys",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table} visible without a tenant");
    }
    // After a transaction-local tenant ends the setting reads '', still no rows and no error.
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query(&format!("SET LOCAL mosaic.tenant_id = '{}'", t.id))
        .execute(&mut *tx)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1);
    tx.commit().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // Writing another tenant's row is refused by WITH CHECK.
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query(&format!("SET LOCAL mosaic.tenant_id = '{}'", t.id))
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO audit_events (tenant_id, event_id, actor, action, resource_type, resource_id, request_id) VALUES ($1, $1, '', '', '', '', '')")
        .bind(uuid::Uuid::now_v7())
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
}

#[tokio::test]
async fn tenant_reads_use_the_index() {
    let t = app().new_tenant().await;
    let mut conn = app().identity_role_db().await;
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    sqlx::query(&format!("SET LOCAL mosaic.tenant_id = '{}'", t.id))
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN SELECT m.user_id FROM memberships m WHERE m.tenant_id = '{}' AND m.user_id = '{}'",
        t.id, t.owner
    ))
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("Index"), "{plan}");
    assert!(
        plan.contains("InitPlan"),
        "the policy's setting is read once per statement:\n{plan}"
    );
}
