//! The credentials vault: connections' standard methods (metadata only),
//! RevealSecret for the `svc:integrations` role alone, etag-safe secret
//! replacement, envelope encryption bound to tenant, connection and version
//! (a moved ciphertext is DATA_LOSS and logged), no clear secret in any column,
//! log line or error, both rotations under concurrent reads, and a wrong master
//! key refused at startup.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mosaic_core::{Env, TenantId};
use mosaic_proto::common::ListAuditEventsRequest;
use mosaic_proto::identity::{
    Connection, ConnectionStatus, CreateConnectionRequest, CreateTenantRequest,
    DeleteConnectionRequest, GetConnectionRequest, ListConnectionsRequest, Plan, Provider,
    ReplaceSecretRequest, RevealSecretRequest, Tenant, UndeleteConnectionRequest,
    UpdateConnectionRequest, audit_service_client::AuditServiceClient,
    connection_service_client::ConnectionServiceClient, tenant_service_client::TenantServiceClient,
};
use sqlx::Row;
use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::harness::{
    TEST_MASTER_KEY_NEXT, TEST_PREVIOUS_KEYS, app, assert_bad_field, assert_error, authed,
    master_key, suite_with,
};

const WORKER: &str = "svc:integrations";

fn client() -> ConnectionServiceClient<Channel> {
    ConnectionServiceClient::new(app().channel())
}

/// A worker of `tenant` (a token carrying the tenant and the service role).
fn worker(tenant: TenantId) -> String {
    app().token(Some(tenant), "service:sync-worker", &[WORKER])
}

fn admin(tenant: TenantId) -> String {
    app().token(
        Some(tenant),
        &format!("user:{}", Uuid::now_v7()),
        &["admin"],
    )
}

fn new_connection(display_name: &str) -> Connection {
    Connection {
        provider: Provider::Hubspot as i32,
        display_name: display_name.into(),
        scopes: vec!["crm.objects.contacts.read".into(), "oauth".into()],
        metadata: Some(mosaic_api::convert::json_to_struct(
            serde_json::json!({"portal_id": 42}),
        )),
        ..Default::default()
    }
}

async fn create(
    client: &mut ConnectionServiceClient<Channel>,
    tenant: TenantId,
    name: &str,
    secret: &[u8],
) -> Connection {
    client
        .create_connection(authed(
            CreateConnectionRequest {
                connection: Some(new_connection(name)),
                secret: secret.to_vec(),
                request_id: String::new(),
            },
            &admin(tenant),
        ))
        .await
        .expect("create connection")
        .into_inner()
}

async fn reveal(
    client: &mut ConnectionServiceClient<Channel>,
    token: &str,
    tenant_id: &str,
    connection_id: &str,
) -> Result<(Connection, Vec<u8>), tonic::Status> {
    client
        .reveal_secret(authed(
            RevealSecretRequest {
                tenant_id: tenant_id.into(),
                connection_id: connection_id.into(),
                reason: "sync contacts job 1".into(),
            },
            token,
        ))
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.connection.unwrap_or_default(), r.secret)
        })
}

#[tokio::test]
async fn connections_keep_metadata_and_never_return_the_secret() {
    let tenant = app().new_tenant().await;
    let mut c = client();
    let token = admin(tenant.id);
    let created = create(&mut c, tenant.id, "HubSpot", b"token-one").await;
    assert_eq!(created.secret_version, 1);
    assert_eq!(created.status, ConnectionStatus::Active as i32);
    assert_eq!(created.scopes, ["crm.objects.contacts.read", "oauth"]);
    let got = c
        .get_connection(authed(
            GetConnectionRequest {
                connection_id: created.connection_id.clone(),
            },
            &tenant.token("viewer"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    // Update: mask, etag; a stale etag is ABORTED.
    let updated = c
        .update_connection(authed(
            UpdateConnectionRequest {
                connection: Some(Connection {
                    connection_id: created.connection_id.clone(),
                    status: ConnectionStatus::NeedsReauth as i32,
                    display_name: "ignored".into(),
                    etag: created.etag.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["status".into()],
                }),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.status, ConnectionStatus::NeedsReauth as i32);
    assert_eq!(updated.display_name, "HubSpot");
    assert_eq!(updated.secret_version, 1);
    let stale = c
        .update_connection(authed(
            UpdateConnectionRequest {
                connection: Some(Connection {
                    connection_id: created.connection_id.clone(),
                    display_name: "x".into(),
                    etag: created.etag.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_error(&stale, Code::Aborted, "ETAG_MISMATCH");

    // List with filters and pages.
    let second = create(&mut c, tenant.id, "Second", b"token-two").await;
    let list = |provider: Provider, status: ConnectionStatus, page_token: String| {
        authed(
            ListConnectionsRequest {
                page_size: 1,
                page_token,
                provider: provider as i32,
                status: status as i32,
                show_deleted: false,
            },
            &token,
        )
    };
    let page = c
        .list_connections(list(
            Provider::Unspecified,
            ConnectionStatus::Unspecified,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.connections[0].connection_id, created.connection_id);
    let next = c
        .list_connections(list(
            Provider::Unspecified,
            ConnectionStatus::Unspecified,
            page.next_page_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.connections[0].connection_id, second.connection_id);
    let active = c
        .list_connections(list(
            Provider::Hubspot,
            ConnectionStatus::Active,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.connections.len(), 1);
    assert_eq!(active.connections[0].connection_id, second.connection_id);

    // Delete hides it and its secret; undelete restores both.
    let deleted = c
        .delete_connection(authed(
            DeleteConnectionRequest {
                connection_id: second.connection_id.clone(),
                etag: String::new(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some() && deleted.expire_time.is_some());
    let hidden = reveal(&mut c, &worker(tenant.id), "", &second.connection_id)
        .await
        .unwrap_err();
    assert_error(&hidden, Code::FailedPrecondition, "CONNECTION_DELETED");
    c.undelete_connection(authed(
        UndeleteConnectionRequest {
            connection_id: second.connection_id.clone(),
        },
        &token,
    ))
    .await
    .unwrap();
    let (_, secret) = reveal(&mut c, &worker(tenant.id), "", &second.connection_id)
        .await
        .unwrap();
    assert_eq!(secret, b"token-two");

    // Members below admin cannot write.
    let member = c
        .create_connection(authed(
            CreateConnectionRequest {
                connection: Some(new_connection("x")),
                secret: b"s".to_vec(),
                request_id: String::new(),
            },
            &tenant.token("member"),
        ))
        .await
        .unwrap_err();
    assert_eq!(member.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn bad_input_names_every_field() {
    let tenant = app().new_tenant().await;
    let mut c = client();
    let token = admin(tenant.id);
    let bad = c
        .create_connection(authed(
            CreateConnectionRequest {
                connection: Some(Connection {
                    provider: 0,
                    display_name: " ".into(),
                    scopes: vec!["ok".into(), "has space".into()],
                    status: 99,
                    ..Default::default()
                }),
                secret: Vec::new(),
                request_id: "nope".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    for field in [
        "connection.provider",
        "connection.display_name",
        "connection.scopes[1]",
        "connection.status",
        "secret",
        "request_id",
    ] {
        assert_bad_field(&bad, field);
    }
    let big = c
        .create_connection(authed(
            CreateConnectionRequest {
                connection: Some(new_connection("big")),
                secret: vec![b'x'; 16 * 1024 + 1],
                request_id: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_bad_field(&big, "secret");
    let created = create(&mut c, tenant.id, "ok", b"s").await;
    let no_etag = c
        .replace_secret(authed(
            ReplaceSecretRequest {
                tenant_id: String::new(),
                connection_id: created.connection_id.clone(),
                secret: b"new".to_vec(),
                etag: String::new(),
            },
            &worker(tenant.id),
        ))
        .await
        .unwrap_err();
    assert_bad_field(&no_etag, "etag");
    let no_reason = c
        .reveal_secret(authed(
            RevealSecretRequest {
                tenant_id: "x".into(),
                connection_id: "y".into(),
                reason: String::new(),
            },
            &worker(tenant.id),
        ))
        .await
        .unwrap_err();
    for field in ["tenant_id", "connection_id", "reason"] {
        assert_bad_field(&no_reason, field);
    }
}

#[tokio::test]
async fn another_tenant_and_its_worker_see_nothing() {
    let (a, b) = (app().new_tenant().await, app().new_tenant().await);
    let mut c = client();
    let secret_a = create(&mut c, a.id, "A", b"a-secret").await;
    create(&mut c, b.id, "B", b"b-secret").await;
    let id = secret_a.connection_id.clone();

    // B's worker: by its own tenant, and naming A's.
    for tenant_id in [String::new(), a.id.to_string()] {
        let err = reveal(&mut c, &worker(b.id), &tenant_id, &id)
            .await
            .unwrap_err();
        assert_error(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
        let err = c
            .replace_secret(authed(
                ReplaceSecretRequest {
                    tenant_id: tenant_id.clone(),
                    connection_id: id.clone(),
                    secret: b"stolen".to_vec(),
                    etag: secret_a.etag.clone(),
                },
                &worker(b.id),
            ))
            .await
            .unwrap_err();
        assert_error(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
    }
    // B's admin: every standard method.
    let token = admin(b.id);
    let get = c
        .get_connection(authed(
            GetConnectionRequest {
                connection_id: id.clone(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_error(&get, Code::NotFound, "CONNECTION_NOT_FOUND");
    let update = c
        .update_connection(authed(
            UpdateConnectionRequest {
                connection: Some(Connection {
                    connection_id: id.clone(),
                    display_name: "x".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_error(&update, Code::NotFound, "CONNECTION_NOT_FOUND");
    for deleted in [true, false] {
        let err = if deleted {
            c.delete_connection(authed(
                DeleteConnectionRequest {
                    connection_id: id.clone(),
                    etag: String::new(),
                },
                &token,
            ))
            .await
        } else {
            c.undelete_connection(authed(
                UndeleteConnectionRequest {
                    connection_id: id.clone(),
                },
                &token,
            ))
            .await
        }
        .unwrap_err();
        assert_error(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
    }
    let listed = c
        .list_connections(authed(ListConnectionsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.connections.iter().all(|c| c.connection_id != id));
    // A's own worker, and a platform-wide worker naming A, reveal it.
    let (_, secret) = reveal(&mut c, &worker(a.id), "", &id).await.unwrap();
    assert_eq!(secret, b"a-secret");
    let platform_worker = app().token(None, "service:sync", &[WORKER]);
    let (_, secret) = reveal(&mut c, &platform_worker, &a.id.to_string(), &id)
        .await
        .unwrap();
    assert_eq!(secret, b"a-secret");
}

#[tokio::test]
async fn only_the_integrations_role_reveals_and_each_reveal_is_audited() {
    let tenant = app().new_tenant().await;
    let mut c = client();
    let created = create(&mut c, tenant.id, "Slack", b"xoxb-1").await;
    for token in [
        tenant.owner_token.clone(),
        app().platform_token(),
        app().token(Some(tenant.id), "service:other", &["svc:agent_lookup"]),
    ] {
        let err = reveal(&mut c, &token, "", &created.connection_id)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    let (connection, secret) = reveal(&mut c, &worker(tenant.id), "", &created.connection_id)
        .await
        .unwrap();
    assert_eq!(secret, b"xoxb-1");
    assert_eq!(connection.etag, created.etag);
    let events = AuditServiceClient::new(app().channel())
        .list_audit_events(authed(
            ListAuditEventsRequest {
                resource_type: "connection".into(),
                resource_id: created.connection_id.clone(),
                ..Default::default()
            },
            &tenant.owner_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let revealed = events
        .iter()
        .find(|e| e.action == "connection.reveal")
        .expect("reveal audited");
    assert_eq!(revealed.actor, "service:sync-worker");
    let details = format!("{:?}", revealed.details);
    assert!(details.contains("sync contacts job 1"), "{details}");
    assert!(!details.contains("xoxb-1"), "{details}");
    assert!(events.iter().any(|e| e.action == "connection.create"));
}

#[tokio::test]
async fn two_workers_refreshing_at_once_lose_no_token() {
    let tenant = app().new_tenant().await;
    let mut c = client();
    let created = create(&mut c, tenant.id, "Salesforce", b"refresh-0").await;
    let (read, _) = reveal(&mut c, &worker(tenant.id), "", &created.connection_id)
        .await
        .unwrap();
    let replace = |secret: &'static [u8]| {
        let mut c = client();
        let request = ReplaceSecretRequest {
            tenant_id: String::new(),
            connection_id: created.connection_id.clone(),
            secret: secret.to_vec(),
            etag: read.etag.clone(),
        };
        let token = worker(tenant.id);
        async move { c.replace_secret(authed(request, &token)).await }
    };
    let (one, two) = tokio::join!(replace(b"refresh-1"), replace(b"refresh-2"));
    let (winner, loser, secret) = match (one, two) {
        (Ok(w), Err(l)) => (w.into_inner(), l, b"refresh-1"),
        (Err(l), Ok(w)) => (w.into_inner(), l, b"refresh-2"),
        other => panic!("exactly one replace must win: {other:?}"),
    };
    assert_error(&loser, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(winner.secret_version, 2);
    let (now, revealed) = reveal(&mut c, &worker(tenant.id), "", &created.connection_id)
        .await
        .unwrap();
    assert_eq!(revealed, secret);
    assert_eq!(now.secret_version, 2);
    assert_eq!(now.etag, winner.etag);
}

/// The vault's database columns of `connection`: (ciphertext, key version).
async fn ciphertext(db: &mut sqlx::PgConnection, connection: &str) -> (Vec<u8>, i32) {
    let row = sqlx::query(
        "SELECT secret_ciphertext, key_version FROM identity.connections WHERE connection_id = $1",
    )
    .bind(connection.parse::<Uuid>().unwrap())
    .fetch_one(db)
    .await
    .unwrap();
    (row.get(0), row.get(1))
}

async fn put_ciphertext(db: &mut sqlx::PgConnection, connection: &str, bytes: &[u8]) {
    sqlx::query("UPDATE identity.connections SET secret_ciphertext = $2 WHERE connection_id = $1")
        .bind(connection.parse::<Uuid>().unwrap())
        .bind(bytes)
        .execute(db)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_or_tenant_does_not_decrypt() {
    let (a, b) = (app().new_tenant().await, app().new_tenant().await);
    let mut c = client();
    let a1 = create(&mut c, a.id, "A1", b"alpha-one").await;
    let a2 = create(&mut c, a.id, "A2", b"alpha-two").await;
    let b1 = create(&mut c, b.id, "B1", b"bravo-one").await;
    let mut db = app().admin_db().await;
    let (stolen, _) = ciphertext(&mut db, &a1.connection_id).await;
    put_ciphertext(&mut db, &a2.connection_id, &stolen).await;
    put_ciphertext(&mut db, &b1.connection_id, &stolen).await;
    for (tenant, id) in [(a.id, &a2.connection_id), (b.id, &b1.connection_id)] {
        let err = reveal(&mut c, &worker(tenant), "", id).await.unwrap_err();
        assert_error(&err, Code::DataLoss, "SECRET_UNREADABLE");
        assert!(!err.message().contains("alpha"), "{err:?}");
    }
    // A damaged ciphertext too; the original row still decrypts.
    let mut flipped = stolen.clone();
    *flipped.last_mut().unwrap() ^= 0x55;
    put_ciphertext(&mut db, &a2.connection_id, &flipped).await;
    let err = reveal(&mut c, &worker(a.id), "", &a2.connection_id)
        .await
        .unwrap_err();
    assert_error(&err, Code::DataLoss, "SECRET_UNREADABLE");
    let (_, secret) = reveal(&mut c, &worker(a.id), "", &a1.connection_id)
        .await
        .unwrap();
    assert_eq!(secret, b"alpha-one");
    // A replaced secret makes the row readable again.
    let current = c
        .get_connection(authed(
            GetConnectionRequest {
                connection_id: a2.connection_id.clone(),
            },
            &admin(a.id),
        ))
        .await
        .unwrap()
        .into_inner();
    c.replace_secret(authed(
        ReplaceSecretRequest {
            tenant_id: String::new(),
            connection_id: a2.connection_id.clone(),
            secret: b"alpha-two-again".to_vec(),
            etag: current.etag,
        },
        &admin(a.id),
    ))
    .await
    .unwrap();
    let (_, secret) = reveal(&mut c, &worker(a.id), "", &a2.connection_id)
        .await
        .unwrap();
    assert_eq!(secret, b"alpha-two-again");
}

/// Every text-like and bytea column of every table of the database, as
/// `(schema, table, column, data type)`.
async fn columns(db: &mut sqlx::PgConnection) -> Vec<(String, String, String, String)> {
    sqlx::query_as(
        "SELECT c.table_schema::text, c.table_name::text, c.column_name::text, c.data_type::text \
         FROM information_schema.columns c JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE t.table_type = 'BASE TABLE' \
           AND c.table_schema NOT IN ('pg_catalog', 'information_schema') \
           AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea', 'ARRAY')",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

/// Where `needle` appears in the database: `schema.table.column` of each hit.
/// Text-like columns are searched for the string, bytea columns for the
/// bytes; every column also as text (bytea prints as hex there, so a hex
/// copy is found too).
async fn find_in_database(db: &mut sqlx::PgConnection, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
    for (schema, table, column, data_type) in columns(db).await {
        let sql = if data_type == "bytea" {
            format!(
                "SELECT count(*) FROM \"{schema}\".\"{table}\" \
                 WHERE position($1::bytea IN \"{column}\") > 0 \
                    OR position($2 IN \"{column}\"::text) > 0"
            )
        } else {
            format!(
                "SELECT count(*) FROM \"{schema}\".\"{table}\" \
                 WHERE position($3 IN \"{column}\"::text) > 0 OR position($2 IN \"{column}\"::text) > 0"
            )
        };
        let count: i64 = sqlx::query_scalar(&sql)
            .bind(needle.as_bytes())
            .bind(&hex)
            .bind(needle)
            .fetch_one(&mut *db)
            .await
            .unwrap_or_else(|e| panic!("{schema}.{table}.{column}: {e}"));
        if count > 0 {
            hits.push(format!("{schema}.{table}.{column}"));
        }
    }
    hits
}

#[tokio::test]
async fn no_clear_secret_in_any_column_log_line_or_error() {
    // The real binary with debug logs on stdout, sharing the test database
    // and the suite's token key and keyring.
    let port = crate::harness::child_port();
    let env = &app().env;
    let get = |name: &str| env.get(name).unwrap().unwrap_or_default();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mosaic"))
        .arg("serve")
        .env("MOSAIC_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("MOSAIC_METRICS_ADDR", "off")
        .env("MOSAIC_LOG", "debug")
        .env("MOSAIC_LOG_FORMAT", "json")
        .env("MOSAIC_JWT_HS256_SECRET", get("MOSAIC_JWT_HS256_SECRET"))
        .env("MOSAIC_JWT_PUBLIC_KEY", "")
        .env("MOSAIC_JWT_ISSUER", get("MOSAIC_JWT_ISSUER"))
        .env("MOSAIC_RATE_LIMIT_PER_SECOND", "0")
        .env("MOSAIC_DB_MAX_CONNECTIONS", "2")
        .env("MOSAIC_DB_MIN_CONNECTIONS", "0")
        .env("MOSAIC_DB_READ_CONNECTIONS", "1")
        .env("MOSAIC_VAULT_MASTER_KEY", master_key())
        .env("MOSAIC_VAULT_PREVIOUS_MASTER_KEYS", TEST_PREVIOUS_KEYS)
        .env_remove("MOSAIC_VAULT_MASTER_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out).await;
        let mut err = Vec::new();
        let _ = stderr.read_to_end(&mut err).await;
        out.extend_from_slice(&err);
        String::from_utf8_lossy(&out).into_owned()
    });
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    let mut c = ConnectionServiceClient::new(channel.clone());

    let tenant_owner = format!("owner-{}@example.com", Uuid::now_v7().simple());
    let started = Instant::now();
    let tenant = loop {
        let created = TenantServiceClient::new(channel.clone())
            .create_tenant(authed(
                CreateTenantRequest {
                    tenant: Some(Tenant {
                        display_name: "Vault".into(),
                        plan: Plan::Pro as i32,
                        ..Default::default()
                    }),
                    owner_email: tenant_owner.clone(),
                    ..Default::default()
                },
                &app().platform_token(),
            ))
            .await;
        match created {
            Ok(t) => break t.into_inner(),
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the binary did not start: {e:?}"),
        }
    };
    let tenant = TenantId::from(tenant.tenant_id.parse::<Uuid>().unwrap());
    let known = format!("known-secret-{}", Uuid::now_v7().simple());
    let replaced = format!("replaced-secret-{}", Uuid::now_v7().simple());
    let a1 = c
        .create_connection(authed(
            CreateConnectionRequest {
                connection: Some(new_connection("Logged")),
                secret: known.clone().into_bytes(),
                request_id: Uuid::now_v7().to_string(),
            },
            &admin(tenant),
        ))
        .await
        .unwrap()
        .into_inner();
    let a2 = c
        .create_connection(authed(
            CreateConnectionRequest {
                connection: Some(new_connection("Other")),
                secret: b"other".to_vec(),
                request_id: String::new(),
            },
            &admin(tenant),
        ))
        .await
        .unwrap()
        .into_inner();
    let (_, revealed) = reveal(&mut c, &worker(tenant), "", &a1.connection_id)
        .await
        .unwrap();
    assert_eq!(revealed, known.as_bytes());
    let mut errors = Vec::new();
    // Refusals that carry the secret in their request.
    errors.push(
        c.replace_secret(authed(
            ReplaceSecretRequest {
                tenant_id: String::new(),
                connection_id: a1.connection_id.clone(),
                secret: replaced.clone().into_bytes(),
                etag: "\"999\"".into(),
            },
            &worker(tenant),
        ))
        .await
        .unwrap_err(),
    );
    errors.push(
        c.create_connection(authed(
            CreateConnectionRequest {
                connection: Some(Connection {
                    display_name: known.clone(),
                    ..Default::default()
                }),
                secret: known.clone().into_bytes(),
                request_id: String::new(),
            },
            &admin(tenant),
        ))
        .await
        .unwrap_err(),
    );
    c.replace_secret(authed(
        ReplaceSecretRequest {
            tenant_id: String::new(),
            connection_id: a1.connection_id.clone(),
            secret: replaced.clone().into_bytes(),
            etag: a1.etag.clone(),
        },
        &worker(tenant),
    ))
    .await
    .unwrap();
    // A moved ciphertext: DATA_LOSS, and the operator's log line.
    let mut db = app().admin_db().await;
    let (stolen, _) = ciphertext(&mut db, &a1.connection_id).await;
    put_ciphertext(&mut db, &a2.connection_id, &stolen).await;
    let moved = reveal(&mut c, &worker(tenant), "", &a2.connection_id)
        .await
        .unwrap_err();
    assert_error(&moved, Code::DataLoss, "SECRET_UNREADABLE");
    errors.push(moved);

    for error in &errors {
        let text = format!("{error:?}");
        assert!(
            !text.contains(&known) && !text.contains(&replaced),
            "{text}"
        );
    }
    for needle in [&known, &replaced] {
        let hits = find_in_database(&mut db, needle).await;
        assert!(hits.is_empty(), "{needle} found in {hits:?}");
        // Base64 of it, too (the proto's JSON form of bytes).
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(needle.as_bytes());
        let hits = find_in_database(&mut db, &b64[..b64.len() - 4]).await;
        assert!(hits.is_empty(), "base64 of {needle} found in {hits:?}");
    }
    // Stop the binary and read everything it logged.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let logs = tokio::time::timeout(Duration::from_secs(20), logs)
        .await
        .unwrap()
        .unwrap();
    assert!(
        logs.contains("ConnectionService/RevealSecret"),
        "no request logs captured"
    );
    for needle in [&known, &replaced] {
        assert!(!logs.contains(needle.as_str()), "a secret reached the logs");
        let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!logs.contains(&hex), "a secret reached the logs in hex");
    }
    let line = logs
        .lines()
        .find(|line| line.contains("vault: a secret does not decrypt"))
        .expect("the moved ciphertext is logged for operators");
    assert!(line.contains(&a2.connection_id), "{line}");
    assert!(line.contains(&tenant.to_string()), "{line}");
}

/// Readers that reveal `ids` over and over until told to stop, checking
/// each secret; returns (reads, failures).
fn readers(
    tenant_secrets: Vec<(TenantId, String, Vec<u8>)>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u64, Vec<String>)>> {
    let shared = Arc::new(tenant_secrets);
    (0..4)
        .map(|reader| {
            let (shared, stop) = (shared.clone(), stop.clone());
            tokio::spawn(async move {
                let mut c = client();
                let (mut reads, mut failures) = (0u64, Vec::new());
                let mut i = reader;
                while !stop.load(Ordering::Relaxed) || reads < 5 {
                    let (tenant, id, expected) = &shared[i % shared.len()];
                    i += 1;
                    match reveal(&mut c, &worker(*tenant), "", id).await {
                        Ok((_, secret)) if &secret == expected => reads += 1,
                        Ok(_) => failures.push(format!("{id}: another secret")),
                        Err(e) => failures.push(format!("{id}: {e:?}")),
                    }
                }
                (reads, failures)
            })
        })
        .collect()
}

async fn join_readers(handles: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>) -> u64 {
    let mut total = 0;
    for handle in handles {
        let (reads, failures) = handle.await.unwrap();
        assert!(failures.is_empty(), "reads failed: {failures:?}");
        total += reads;
    }
    total
}

#[tokio::test]
async fn a_data_key_rotation_reencrypts_in_batches_while_reads_go_on() {
    let tenant = app().new_tenant().await;
    let mut c = client();
    let mut secrets = Vec::new();
    for n in 0..7 {
        let secret = format!("rotating-{n}").into_bytes();
        let created = create(&mut c, tenant.id, &format!("C{n}"), &secret).await;
        secrets.push((tenant.id, created.connection_id, secret));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handles = readers(secrets.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = mosaic::rotate_data_key(&app().env, tenant.id, 2)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let reads = join_readers(handles).await;
    assert!(reads > 0);
    assert_eq!(report.key_version, 2);
    assert_eq!(report.reencrypted, 7);
    assert_eq!(report.batches, 4, "7 secrets in batches of 2");
    assert_eq!(report.retired, 1);
    let mut db = app().admin_db().await;
    let versions: Vec<i32> = sqlx::query_scalar(
        "SELECT key_version FROM identity.tenant_keys WHERE tenant_id = $1 ORDER BY 1",
    )
    .bind(tenant.id)
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(versions, [2]);
    for (_, id, _) in &secrets {
        assert_eq!(ciphertext(&mut db, id).await.1, 2);
    }
    // The etag did not change (the secrets did not), so a worker's etag holds.
    let (read, secret) = reveal(&mut c, &worker(tenant.id), "", &secrets[0].1)
        .await
        .unwrap();
    assert_eq!(secret, secrets[0].2);
    assert_eq!(read.secret_version, 1);
    let events = AuditServiceClient::new(app().channel())
        .list_audit_events(authed(
            ListAuditEventsRequest {
                resource_type: "data_key".into(),
                ..Default::default()
            },
            &tenant.owner_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for action in ["data_key.rotate", "data_key.reencrypt", "data_key.retire"] {
        assert!(actions.contains(&action), "{actions:?}");
    }
    assert!(events.iter().all(|e| e.actor == "system:vault-rotation"));
}

#[tokio::test]
async fn a_master_key_rotation_rewraps_every_data_key_while_reads_go_on() {
    let mut c = client();
    let mut secrets = Vec::new();
    let mut tenants = Vec::new();
    for n in 0..3 {
        let tenant = app().new_tenant().await;
        let secret = format!("wrapped-{n}").into_bytes();
        let created = create(&mut c, tenant.id, "W", &secret).await;
        secrets.push((tenant.id, created.connection_id.clone(), secret));
        tenants.push(tenant.id);
    }
    let key_id = |key: &str| {
        use mosaic_identity::vault::MasterKey as _;
        mosaic_identity::vault::Keyring::from_env(&Env::from_pairs([(
            mosaic_identity::vault::MASTER_KEY,
            key,
        )]))
        .unwrap()
        .current_id()
        .to_owned()
    };
    let master_of = async |db: &mut sqlx::PgConnection, tenant: TenantId| -> String {
        sqlx::query_scalar("SELECT master_key_id FROM identity.tenant_keys WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(db)
            .await
            .unwrap()
    };
    let mut db = app().admin_db().await;
    // The suite wraps new keys under the tests' key (another test may have
    // rotated to the next one and not yet back: then this tenant's key is
    // already re-wrapped, or will be by the rotation below).
    let rotated = app()
        .env
        .clone()
        .with("MOSAIC_VAULT_MASTER_KEY", TEST_MASTER_KEY_NEXT)
        .with(
            "MOSAIC_VAULT_PREVIOUS_MASTER_KEYS",
            format!("{},{TEST_PREVIOUS_KEYS}", master_key()),
        );
    let stop = Arc::new(AtomicBool::new(false));
    let handles = readers(secrets.clone(), stop.clone());
    let report = mosaic::rotate_master_key(&rotated).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let reads = join_readers(handles).await;
    assert!(reads > 0);
    assert!(report.rewrapped >= 3, "{report:?}");
    for &tenant in &tenants {
        assert_eq!(
            master_of(&mut db, tenant).await,
            key_id(TEST_MASTER_KEY_NEXT)
        );
    }
    // Reads work after it, and rotating back re-wraps them again.
    let stop = Arc::new(AtomicBool::new(false));
    let handles = readers(secrets.clone(), stop.clone());
    let back = mosaic::rotate_master_key(&app().env).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    join_readers(handles).await;
    assert!(back.rewrapped >= 3, "{back:?}");
    for &tenant in &tenants {
        assert_eq!(master_of(&mut db, tenant).await, key_id(&master_key()));
    }
    let rewraps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM identity.audit_events WHERE tenant_id = $1 AND action = 'data_key.rewrap'",
    )
    .bind(tenants[0])
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(rewraps >= 2, "{rewraps}");
}

#[tokio::test]
async fn a_wrong_master_key_at_startup_is_a_clear_error() {
    // A data key exists, wrapped under the tests' key.
    let tenant = app().new_tenant().await;
    create(&mut client(), tenant.id, "K", b"k").await;
    let wrong = mosaic_identity::vault::new_master_key();
    let env = app()
        .env
        .clone()
        .with("MOSAIC_VAULT_MASTER_KEY", wrong.as_str())
        .with("MOSAIC_VAULT_PREVIOUS_MASTER_KEYS", "")
        .with("MOSAIC_DB_MAX_CONNECTIONS", "2")
        .with("MOSAIC_DB_READ_CONNECTIONS", "1");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = mosaic::run(
        &env,
        listener,
        mosaic_server::Shutdown::new(),
        std::future::pending(),
    );
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("refused at startup, not served")
        .expect_err("a wrong master key");
    let message = err.to_string();
    assert!(message.contains("MOSAIC_VAULT_MASTER_KEY"), "{message}");
    assert!(message.contains("wrong master key"), "{message}");
    assert!(!message.contains(wrong.as_str()), "{message}");
    // A malformed or missing one names its variable.
    for (value, expect) in [
        ("not-a-key", "MOSAIC_VAULT_MASTER_KEY"),
        ("", "MOSAIC_VAULT_MASTER_KEY"),
    ] {
        let env = env.clone().with("MOSAIC_VAULT_MASTER_KEY", value);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = mosaic::run(
            &env,
            listener,
            mosaic_server::Shutdown::new(),
            std::future::pending(),
        )
        .await
        .expect_err("refused");
        assert!(err.to_string().contains(expect), "{err}");
    }
}

#[tokio::test]
async fn reveals_are_rate_limited_per_tenant() {
    let env = app()
        .env
        .clone()
        .with("MOSAIC_VAULT_REVEAL_PER_SECOND", "1")
        .with("MOSAIC_VAULT_REVEAL_BURST", "2")
        .with("MOSAIC_REDIS_TIMEOUT_MS", "500");
    let mut limited = ConnectionServiceClient::new(suite_with(env).await);
    let (a, b) = (app().new_tenant().await, app().new_tenant().await);
    let mut c = client();
    let ca = create(&mut c, a.id, "A", b"a").await;
    let cb = create(&mut c, b.id, "B", b"b").await;
    let counted = AtomicU64::new(0);
    let started = Instant::now();
    let err = loop {
        match reveal(&mut limited, &worker(a.id), "", &ca.connection_id).await {
            Ok(_) => counted.fetch_add(1, Ordering::Relaxed),
            Err(e) => break e,
        };
        assert!(started.elapsed() < Duration::from_secs(30), "never limited");
    };
    assert_error(&err, Code::ResourceExhausted, "REVEAL_RATE_LIMITED");
    assert!(counted.load(Ordering::Relaxed) >= 2);
    reveal(&mut limited, &worker(b.id), "", &cb.connection_id)
        .await
        .expect("another tenant is not limited");
}

#[tokio::test]
async fn a_deleted_connection_and_its_ciphertext_are_purged_after_retention() {
    let tenant = app().new_tenant().await;
    let mut c = client();
    let kept = create(&mut c, tenant.id, "Kept", b"kept").await;
    let gone = create(&mut c, tenant.id, "Gone", b"gone").await;
    for id in [&kept.connection_id, &gone.connection_id] {
        c.delete_connection(authed(
            DeleteConnectionRequest {
                connection_id: id.clone(),
                etag: String::new(),
            },
            &admin(tenant.id),
        ))
        .await
        .unwrap();
    }
    let mut db = app().admin_db().await;
    sqlx::query(
        "UPDATE identity.connections SET deleted_at = now() - interval '31 days' \
         WHERE connection_id = $1",
    )
    .bind(gone.connection_id.parse::<Uuid>().unwrap())
    .execute(&mut db)
    .await
    .unwrap();
    let pool =
        mosaic_db::Database::connect_lazy(&app().db_config("identity"), "purge-test").unwrap();
    let (_, _, purged) = mosaic_identity::purge::purge_tenant(&pool, tenant.id, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let left: Vec<Uuid> =
        sqlx::query_scalar("SELECT connection_id FROM identity.connections WHERE tenant_id = $1")
            .bind(tenant.id)
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(left, [kept.connection_id.parse::<Uuid>().unwrap()]);
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM identity.audit_events WHERE tenant_id = $1 AND action = 'connection.purge'",
    )
    .bind(tenant.id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(events, 1);
    pool.close().await;
}
