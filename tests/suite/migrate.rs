//! `mosaic migrate` is safe when two replicas start at once: both finish, each
//! migration is applied exactly once, and a second run applies nothing.

use mosaic_server::suite;
use uuid::Uuid;

use crate::harness::app;

#[tokio::test]
async fn two_migrators_at_once_apply_each_migration_once() {
    app(); // roles exist
    let database = format!("mosaic_migrate_{}", Uuid::new_v4().simple());
    let url = format!("postgres://mosaic_identity:mosaic-local@127.0.0.1:5432/{database}");
    let env = app().env.clone().with("MOSAIC_IDENTITY_DATABASE_URL", url);
    let identity: &[&'static dyn mosaic_server::ServiceModule] = &[&mosaic_identity::Identity];

    let (a, b) = tokio::join!(
        suite::migrate(identity, &env),
        suite::migrate(identity, &env)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // Each migration file, and the migrator's base (version 0).
    let expected = mosaic_identity::MIGRATIONS.iter().count() + 1;
    assert_eq!(
        a.len() + b.len(),
        expected,
        "each migration applied by exactly one of them: {a:?} {b:?}"
    );
    assert!(
        suite::migrate(identity, &env).await.unwrap().is_empty(),
        "a third run has nothing to do"
    );

    let admin = env
        .url(
            suite::ADMIN_DATABASE_URL,
            "postgres://mosaic_admin:mosaic-local@127.0.0.1:5432/postgres",
        )
        .unwrap();
    let opts: sqlx::postgres::PgConnectOptions = admin.expose().parse().unwrap();
    let mut db =
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts.clone().database(&database))
            .await
            .unwrap();
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM mosaic_meta.schema_migrations")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(recorded as usize, expected);
    let owner: String = sqlx::query_scalar(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'identity' AND tablename = 'tenants'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(owner, "mosaic_owner");
    drop(db);

    let mut maintenance = <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&mut maintenance)
        .await
        .unwrap();
}
