//! Access that ends when it should (issue 13): a deleted or never-created
//! tenant is refused by every service, revoking a key, removing a member or
//! lowering a role ends the tokens issued before, within seconds; `nbf` and
//! `iat` are checked; undecodable and too-deep requests are the client's
//! INVALID_ARGUMENT at every depth; page tokens cannot be forged.

use std::time::{Duration, Instant};

use mosaic_proto::crm::{Company, CreateCompanyRequest, ListCompaniesRequest, ListContactsRequest};
use mosaic_proto::identity::{
    AddMemberRequest, CreateApiKeyRequest, DeleteTenantRequest, ExchangeApiKeyRequest,
    GetTenantRequest, ListMembersRequest, Member, RemoveMemberRequest, Role, UndeleteTenantRequest,
    UpdateMemberRequest, api_key_service_client::ApiKeyServiceClient,
    member_service_client::MemberServiceClient, tenant_service_client::TenantServiceClient,
    token_service_client::TokenServiceClient,
};
use mosaic_tenant::Claims;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::crm_support::companies;
use crate::harness::{TestTenant, app, authed};

/// The longest any change may take to reach every service.
const BOUND: Duration = Duration::from_secs(5);

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

async fn create_company(token: &str) -> Result<Company, Status> {
    companies()
        .create_company(authed(
            CreateCompanyRequest {
                company: Some(Company {
                    display_name: "Initech".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Calls of several services with `token`: crm read and write, identity
/// members and API keys.
async fn calls(token: &str) -> Vec<(&'static str, Result<(), Status>)> {
    let members = MemberServiceClient::new(app().channel());
    let keys = ApiKeyServiceClient::new(app().channel());
    vec![
        (
            "ListCompanies",
            companies()
                .list_companies(authed(ListCompaniesRequest::default(), token))
                .await
                .map(drop),
        ),
        ("CreateCompany", create_company(token).await.map(drop)),
        (
            "ListMembers",
            members
                .clone()
                .list_members(authed(ListMembersRequest::default(), token))
                .await
                .map(drop),
        ),
        (
            "AddMember",
            members
                .clone()
                .add_member(authed(
                    AddMemberRequest {
                        email: format!("m-{}@example.com", uuid::Uuid::new_v4().simple()),
                        role: Role::Viewer as i32,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        (
            "CreateApiKey",
            keys.clone()
                .create_api_key(authed(
                    CreateApiKeyRequest {
                        display_name: "k".into(),
                        role: Role::Viewer as i32,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
    ]
}

/// Polls until `refused(token)` holds; returns how long it took.
async fn time_until<F, Fut>(mut done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < BOUND,
            "not within {BOUND:?} (still not after {:?})",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

fn tenants() -> TenantServiceClient<tonic::transport::Channel> {
    TenantServiceClient::new(app().channel())
}

#[tokio::test]
async fn a_deleted_tenant_is_refused_everywhere_until_undeleted() {
    let t = app().new_tenant().await;
    // A token exchanged from an API key before the delete, and the owner's.
    let key = ApiKeyServiceClient::new(app().channel())
        .create_api_key(authed(
            CreateApiKeyRequest {
                display_name: "backend".into(),
                role: Role::Admin as i32,
                ..Default::default()
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let exchanged = TokenServiceClient::new(app().channel())
        .exchange_api_key(ExchangeApiKeyRequest {
            api_key: key.secret,
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    for (name, result) in calls(&t.owner_token).await {
        result.unwrap_or_else(|e| panic!("{name} before the delete: {e:?}"));
    }
    create_company(&exchanged).await.unwrap();

    tenants()
        .delete_tenant(authed(
            DeleteTenantRequest {
                tenant_id: t.id.to_string(),
                ..Default::default()
            },
            &t.owner_token,
        ))
        .await
        .unwrap();
    let took = time_until(|| async {
        create_company(&exchanged).await.is_err() && create_company(&t.owner_token).await.is_err()
    })
    .await;
    println!("deleted tenant refused after {took:?}");
    for token in [&t.owner_token, &exchanged] {
        for (name, result) in calls(token).await {
            let err = result.expect_err(name);
            assert_eq!(err.code(), Code::PermissionDenied, "{name}: {err:?}");
            assert_eq!(reason(&err), "TENANT_INACTIVE", "{name}");
        }
    }
    // The owner can still see the tenant and undelete it.
    let get = || {
        authed(
            GetTenantRequest {
                tenant_id: t.id.to_string(),
            },
            &t.owner_token,
        )
    };
    assert!(
        tenants()
            .get_tenant(get())
            .await
            .unwrap()
            .into_inner()
            .delete_time
            .is_some()
    );
    tenants()
        .undelete_tenant(authed(
            UndeleteTenantRequest {
                tenant_id: t.id.to_string(),
            },
            &t.owner_token,
        ))
        .await
        .unwrap();
    let took = time_until(|| async { create_company(&exchanged).await.is_ok() }).await;
    println!("undeleted tenant restored after {took:?}");
    for (name, result) in calls(&t.owner_token).await {
        result.unwrap_or_else(|e| panic!("{name} after the undelete: {e:?}"));
    }
}

#[tokio::test]
async fn a_tenant_that_never_existed_is_refused() {
    app();
    let ghost = mosaic_core::TenantId::new();
    let token = app().token(Some(ghost), "user:ghost", &["owner"]);
    for (name, result) in calls(&token).await {
        let err = result.expect_err(name);
        assert_eq!(err.code(), Code::PermissionDenied, "{name}: {err:?}");
        assert_eq!(reason(&err), "TENANT_INACTIVE", "{name}");
    }
    // Nothing was written for it.
    let mut db = app().admin_db().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM crm.companies WHERE tenant_id = $1")
        .bind(ghost)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_revoked_key_ends_its_tokens() {
    let t = app().new_tenant().await;
    let mut keys = ApiKeyServiceClient::new(app().channel());
    let key = keys
        .create_api_key(authed(
            CreateApiKeyRequest {
                display_name: "backend".into(),
                role: Role::Member as i32,
                ..Default::default()
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let token = TokenServiceClient::new(app().channel())
        .exchange_api_key(ExchangeApiKeyRequest {
            api_key: key.secret,
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    create_company(&token).await.unwrap();
    keys.revoke_api_key(authed(
        mosaic_proto::identity::RevokeApiKeyRequest {
            api_key_id: key.api_key.unwrap().api_key_id,
        },
        &t.owner_token,
    ))
    .await
    .unwrap();
    let took = time_until(|| async { create_company(&token).await.is_err() }).await;
    println!("revoked key's token refused after {took:?}");
    let err = create_company(&token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(reason(&err), "TOKEN_REVOKED");
    // The tenant's other tokens are untouched.
    create_company(&t.owner_token).await.unwrap();
}

async fn add_member(t: &TestTenant, role: Role) -> Member {
    MemberServiceClient::new(app().channel())
        .add_member(authed(
            AddMemberRequest {
                email: format!("m-{}@example.com", uuid::Uuid::new_v4().simple()),
                role: role as i32,
                ..Default::default()
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn removing_a_member_or_lowering_its_role_ends_its_tokens() {
    let t = app().new_tenant().await;
    let removed = add_member(&t, Role::Member).await;
    let lowered = add_member(&t, Role::Admin).await;
    let token_of = |member: &Member, role: &str| {
        app().token(Some(t.id), &format!("user:{}", member.user_id), &[role])
    };
    let (removed_token, admin_token) = (token_of(&removed, "member"), token_of(&lowered, "admin"));
    create_company(&removed_token).await.unwrap();
    create_company(&admin_token).await.unwrap();

    let mut members = MemberServiceClient::new(app().channel());
    members
        .remove_member(authed(
            RemoveMemberRequest {
                user_id: removed.user_id.clone(),
                ..Default::default()
            },
            &t.owner_token,
        ))
        .await
        .unwrap();
    members
        .update_member(authed(
            UpdateMemberRequest {
                member: Some(Member {
                    user_id: lowered.user_id.clone(),
                    role: Role::Viewer as i32,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["role".into()],
                }),
            },
            &t.owner_token,
        ))
        .await
        .unwrap();
    let took = time_until(|| async {
        create_company(&removed_token).await.is_err() && create_company(&admin_token).await.is_err()
    })
    .await;
    println!("removed member's and lowered role's tokens refused after {took:?}");
    for token in [&removed_token, &admin_token] {
        assert_eq!(
            reason(&create_company(token).await.unwrap_err()),
            "TOKEN_REVOKED"
        );
    }
    // A token issued after the change (with the new role) works; a revocation
    // counts whole seconds, so wait for the next one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let viewer_token = token_of(&lowered, "viewer");
    companies()
        .list_companies(authed(ListCompaniesRequest::default(), &viewer_token))
        .await
        .expect("a token made after the role change");
}

/// A token for the tenant, its claims changed by `edit` before signing.
fn token_with(t: &TestTenant, edit: impl FnOnce(&mut Claims)) -> String {
    let mut claims = Claims::new(
        &app().auth,
        format!("user:{}", t.owner),
        Some(t.id),
        vec!["owner".into()],
        Duration::from_secs(300),
    );
    edit(&mut claims);
    mosaic_tenant::TokenSigner::new(&app().auth.key)
        .unwrap()
        .sign(&claims)
        .unwrap()
}

#[tokio::test]
async fn tokens_from_the_future_are_refused() {
    let t = app().new_tenant().await;
    let now = Claims::new(&app().auth, String::new(), None, vec![], Duration::ZERO).iat;
    for (case, token) in [
        (
            "nbf an hour ahead",
            token_with(&t, |c| c.nbf = Some(now + 3600)),
        ),
        (
            "iat an hour ahead",
            token_with(&t, |c| {
                c.iat = now + 3600;
                c.nbf = None;
                c.exp = now + 7200;
            }),
        ),
    ] {
        let err = create_company(&token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{case}: {err:?}");
        assert_eq!(reason(&err), "TOKEN_NOT_YET_VALID", "{case}");
    }
    // Within the leeway (a few seconds of clock skew) a token is fine.
    create_company(&token_with(&t, |c| c.nbf = Some(now + 2)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_forged_page_token_is_refused_on_page_token() {
    let t = app().new_tenant().await;
    for _ in 0..3 {
        create_company(&t.owner_token).await.unwrap();
    }
    let page = companies()
        .list_companies(authed(
            ListCompaniesRequest {
                page_size: 1,
                ..Default::default()
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    // A cursor of the client's choosing (a time PostgreSQL cannot hold) with
    // a made-up tag, and the real token with its cursor changed.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged = format!(
        "{}.{}",
        b64.encode(br#"["+999999-12-31T00:00:00Z","0191d2c4-0000-7000-8000-000000000000"]"#),
        b64.encode([7u8; 16])
    );
    let (_, tag) = page.next_page_token.split_once('.').unwrap();
    let moved = format!(
        "{}.{tag}",
        b64.encode(br#""0191d2c4-0000-7000-8000-000000000000""#)
    );
    for page_token in [forged, moved] {
        let err = companies()
            .list_companies(authed(
                ListCompaniesRequest {
                    page_size: 1,
                    page_token,
                    ..Default::default()
                },
                &t.owner_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(crate::harness::bad_fields(&err), ["page_token"]);
    }
}

/// `{"a": {"a": ... {"a": null}}}`: the innermost value `depth` levels down.
fn nested(depth: usize) -> prost_types::Struct {
    use prost_types::{Struct, Value, value::Kind};
    let mut inner = Struct {
        fields: [(
            "a".to_owned(),
            Value {
                kind: Some(Kind::NullValue(0)),
            },
        )]
        .into(),
    };
    for _ in 1..depth {
        inner = Struct {
            fields: [(
                "a".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(inner)),
                },
            )]
            .into(),
        };
    }
    inner
}

/// The deepest nesting every Struct field accepts (`mosaic_api::parse`).
const DEEPEST: usize = mosaic_api::parse::MAX_JSON_DEPTH;

/// Every depth from 1 to 200 gets the same answer: OK up to the limit,
/// INVALID_ARGUMENT naming the field past it; never INTERNAL.
async fn sweep<Fut>(field: &str, offset: usize, call: impl Fn(prost_types::Struct) -> Fut)
where
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    for depth in 1..=200 {
        let result = call(nested(depth)).await;
        if depth + offset <= DEEPEST {
            result.unwrap_or_else(|e| panic!("{field} at depth {depth}: {e:?}"));
        } else {
            let err = result.expect_err(&format!("{field} at depth {depth}"));
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{field} at {depth}: {err:?}"
            );
            let fields = crate::harness::bad_fields(&err);
            assert_eq!(fields, [field], "{field} at depth {depth}: {err:?}");
        }
    }
}

#[tokio::test]
async fn struct_fields_answer_every_depth_the_same_way() {
    use mosaic_proto::crm::{
        Activity, ActivityKind, Contact, CreateContactRequest, IngestSignalsRequest,
        LogActivityRequest, Signal,
    };
    use mosaic_proto::identity::{CreateTenantRequest, Tenant};
    let t = app().new_tenant().await;
    let company = create_company(&t.owner_token).await.unwrap();
    let admin = app().platform_token();
    sweep("tenant.settings", 0, |settings| {
        let admin = admin.clone();
        async move {
            tenants()
                .create_tenant(authed(
                    CreateTenantRequest {
                        tenant: Some(Tenant {
                            display_name: "Deep".into(),
                            settings: Some(settings),
                            ..Default::default()
                        }),
                        owner_email: format!("o-{}@example.com", uuid::Uuid::new_v4().simple()),
                        ..Default::default()
                    },
                    &admin,
                ))
                .await
                .map(drop)
        }
    })
    .await;
    sweep("contact.metadata", 0, |metadata| {
        let token = t.owner_token.clone();
        async move {
            crate::crm_support::contacts()
                .create_contact(authed(
                    CreateContactRequest {
                        contact: Some(Contact {
                            email: format!("c-{}@example.com", uuid::Uuid::new_v4().simple()),
                            metadata: Some(metadata),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(drop)
        }
    })
    .await;
    sweep("activity.details", 0, |details| {
        let (token, company_id) = (t.owner_token.clone(), company.company_id.clone());
        async move {
            crate::crm_support::activities()
                .log_activity(authed(
                    LogActivityRequest {
                        activity: Some(Activity {
                            kind: ActivityKind::Note as i32,
                            company_id,
                            occur_time: Some(prost_types::Timestamp {
                                seconds: 1_700_000_000,
                                nanos: 0,
                            }),
                            details: Some(details),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(drop)
        }
    })
    .await;
    // The validators name the entry (signals[0].payload); the decoder, which
    // fails past its own limit, cannot know the index.
    for depth in [DEEPEST, DEEPEST + 1, DEEPEST + 2, 100, 200] {
        let result = crate::crm_support::signals()
            .ingest_signals(authed(
                IngestSignalsRequest {
                    signals: vec![Signal {
                        provider: "hubspot".into(),
                        event_id: uuid::Uuid::new_v4().to_string(),
                        signal_type: "visit".into(),
                        payload: Some(nested(depth)),
                        ..Default::default()
                    }],
                },
                &t.owner_token,
            ))
            .await;
        if depth <= DEEPEST {
            result.unwrap();
        } else {
            let err = result.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "depth {depth}: {err:?}");
            let fields = crate::harness::bad_fields(&err);
            assert!(
                fields == ["signals[0].payload"] || fields == ["signals.payload"],
                "depth {depth}: {fields:?}"
            );
        }
    }
    // The metadata filter wraps the value in {key: value}: one level more.
    sweep("metadata_value", 1, |value| {
        let token = t.owner_token.clone();
        async move {
            crate::crm_support::contacts()
                .list_contacts(authed(
                    ListContactsRequest {
                        metadata_key: "k".into(),
                        metadata_value: Some(prost_types::Value {
                            kind: Some(prost_types::value::Kind::StructValue(value)),
                        }),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(drop)
        }
    })
    .await;
}
