//! TenantService: create, get, list, update, delete, undelete; isolation,
//! idempotency, bad input.

use mosaic_proto::identity::{
    CreateTenantRequest, DeleteTenantRequest, GetTenantRequest, ListTenantsRequest, Plan, Tenant,
    UndeleteTenantRequest, UpdateTenantRequest, tenant_service_client::TenantServiceClient,
};
use prost_types::FieldMask;
use tonic::Code;
use uuid::Uuid;

use crate::harness::{app, assert_bad_field, assert_error, authed};

fn client() -> TenantServiceClient<tonic::transport::Channel> {
    TenantServiceClient::new(app().channel())
}

fn create_req(name: &str, email: &str) -> CreateTenantRequest {
    CreateTenantRequest {
        tenant: Some(Tenant {
            display_name: name.into(),
            plan: Plan::Free as i32,
            ..Default::default()
        }),
        owner_email: email.into(),
        ..Default::default()
    }
}

async fn count_named(name: &str) -> i64 {
    let mut db = app().admin_db().await;
    sqlx::query_scalar("SELECT count(*) FROM identity.tenants WHERE display_name = $1")
        .bind(name)
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn create_then_get() {
    let t = app().new_tenant().await;
    assert_eq!(t.tenant.display_name, "Acme");
    assert_eq!(t.tenant.plan, Plan::Pro as i32);
    assert!(t.tenant.create_time.is_some() && t.tenant.delete_time.is_none());
    let got = client()
        .get_tenant(authed(
            GetTenantRequest {
                tenant_id: t.id.to_string(),
            },
            &t.token("viewer"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, t.tenant);
}

#[tokio::test]
async fn only_platform_admins_create_and_list() {
    let t = app().new_tenant().await;
    let err = client()
        .create_tenant(authed(create_req("x", "a@b.io"), &t.owner_token))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    let err = client()
        .list_tenants(authed(ListTenantsRequest::default(), &t.owner_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn bad_create_input_names_the_field_and_writes_nothing() {
    let name = format!("bad-{}", Uuid::new_v4());
    let cases: Vec<(CreateTenantRequest, &str)> = vec![
        (create_req("", "a@b.io"), "tenant.display_name"),
        (
            create_req(&"x".repeat(201), "a@b.io"),
            "tenant.display_name",
        ),
        (create_req(&name, "not-an-email"), "owner_email"),
        (create_req(&name, ""), "owner_email"),
        (
            CreateTenantRequest {
                tenant: Some(Tenant {
                    display_name: name.clone(),
                    plan: 99,
                    ..Default::default()
                }),
                owner_email: "a@b.io".into(),
                ..Default::default()
            },
            "tenant.plan",
        ),
        (
            CreateTenantRequest {
                request_id: "nope".into(),
                ..create_req(&name, "a@b.io")
            },
            "request_id",
        ),
    ];
    for (req, field) in cases {
        let err = client()
            .create_tenant(authed(req, &app().platform_token()))
            .await
            .unwrap_err();
        assert_bad_field(&err, field);
    }
    assert_eq!(count_named(&name).await, 0);
}

#[tokio::test]
async fn create_is_idempotent_by_request_id() {
    let name = format!("idem-{}", Uuid::new_v4());
    let req = CreateTenantRequest {
        request_id: Uuid::new_v4().to_string(),
        ..create_req(&name, "idem@example.com")
    };
    let token = app().platform_token();
    // Two at once, then a third retry: one tenant.
    let (mut c1, mut c2) = (client(), client());
    let (a, b) = tokio::join!(
        c1.create_tenant(authed(req.clone(), &token)),
        c2.create_tenant(authed(req.clone(), &token))
    );
    let c = client()
        .create_tenant(authed(req.clone(), &token))
        .await
        .unwrap()
        .into_inner();
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    assert_eq!(a.tenant_id, b.tenant_id);
    assert_eq!(a.tenant_id, c.tenant_id);
    assert_eq!(count_named(&name).await, 1);

    let other = CreateTenantRequest {
        owner_email: "else@example.com".into(),
        ..req
    };
    let err = client()
        .create_tenant(authed(other, &token))
        .await
        .unwrap_err();
    assert_bad_field(&err, "request_id");
}

#[tokio::test]
async fn update_with_mask_and_etag() {
    let t = app().new_tenant().await;
    let mut update = Tenant {
        tenant_id: t.id.to_string(),
        display_name: "Renamed".into(),
        plan: Plan::Enterprise as i32,
        etag: t.tenant.etag.clone(),
        ..Default::default()
    };
    let mask = |p: &[&str]| {
        Some(FieldMask {
            paths: p.iter().map(|s| (*s).to_owned()).collect(),
        })
    };
    let updated = client()
        .update_tenant(authed(
            UpdateTenantRequest {
                tenant: Some(update.clone()),
                update_mask: mask(&["display_name"]),
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Renamed");
    assert_eq!(
        updated.plan,
        Plan::Pro as i32,
        "plan not in the mask, unchanged"
    );
    assert_ne!(updated.etag, t.tenant.etag);

    // The old etag is stale now.
    let err = client()
        .update_tenant(authed(
            UpdateTenantRequest {
                tenant: Some(update.clone()),
                update_mask: mask(&["display_name"]),
            },
            &t.owner_token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::Aborted, "ETAG_MISMATCH");

    update.etag = String::new();
    let err = client()
        .update_tenant(authed(
            UpdateTenantRequest {
                tenant: Some(update.clone()),
                update_mask: mask(&["tenant_id"]),
            },
            &t.owner_token,
        ))
        .await
        .unwrap_err();
    assert_bad_field(&err, "update_mask");

    // Admins may rename but not change the plan.
    let err = client()
        .update_tenant(authed(
            UpdateTenantRequest {
                tenant: Some(update.clone()),
                update_mask: mask(&["plan"]),
            },
            &t.token("admin"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client()
        .update_tenant(authed(
            UpdateTenantRequest {
                tenant: Some(update.clone()),
                update_mask: mask(&["display_name"]),
            },
            &t.token("member"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let settings = prost_types::Struct {
        fields: [(
            "locale".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("de".into())),
            },
        )]
        .into(),
    };
    update.settings = Some(settings.clone());
    let updated = client()
        .update_tenant(authed(
            UpdateTenantRequest {
                tenant: Some(update),
                update_mask: mask(&["plan", "settings"]),
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.plan, Plan::Enterprise as i32);
    assert_eq!(updated.settings, Some(settings));
    assert_eq!(updated.display_name, "Renamed");
}

#[tokio::test]
async fn soft_delete_and_undelete() {
    let t = app().new_tenant().await;
    let id = t.id.to_string();
    let deleted = client()
        .delete_tenant(authed(
            DeleteTenantRequest {
                tenant_id: id.clone(),
                etag: String::new(),
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some());
    // Get still returns it; updates are refused; deleting again is a no-op.
    let got = client()
        .get_tenant(authed(
            GetTenantRequest {
                tenant_id: id.clone(),
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(got.delete_time.is_some());
    let err = client()
        .update_tenant(authed(
            UpdateTenantRequest {
                tenant: Some(Tenant {
                    tenant_id: id.clone(),
                    display_name: "x".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
            &t.owner_token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "TENANT_DELETED");
    let again = client()
        .delete_tenant(authed(
            DeleteTenantRequest {
                tenant_id: id.clone(),
                etag: String::new(),
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.etag, deleted.etag);

    assert!(!listed(&id, false).await, "deleted tenants are hidden");
    assert!(listed(&id, true).await, "and shown with show_deleted");

    let restored = client()
        .undelete_tenant(authed(
            UndeleteTenantRequest {
                tenant_id: id.clone(),
            },
            &app().platform_token(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(restored.delete_time.is_none());
    assert!(listed(&id, false).await);
}

/// Whether the platform listing contains `id`, walking every page.
async fn listed(id: &str, show_deleted: bool) -> bool {
    let token = app().platform_token();
    let mut page_token = String::new();
    loop {
        let page = client()
            .list_tenants(authed(
                ListTenantsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    show_deleted,
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        if page.tenants.iter().any(|t| t.tenant_id == id) {
            return true;
        }
        if page.next_page_token.is_empty() {
            return false;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn list_pages_visit_each_tenant_once() {
    for _ in 0..3 {
        app().new_tenant().await;
    }
    let token = app().platform_token();
    let mut seen = std::collections::HashSet::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client()
            .list_tenants(authed(
                ListTenantsRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                    show_deleted: true,
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.tenants.len() <= 2);
        for t in page.tenants {
            assert!(seen.insert(t.tenant_id), "a tenant appeared twice");
        }
        pages += 1;
        if page.next_page_token.is_empty() || pages > 10 {
            // Other tests keep creating tenants; ten pages prove the walk.
            break;
        }
        page_token = page.next_page_token;
    }
    assert!(seen.len() >= 3);

    for (req, field) in [
        (
            ListTenantsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListTenantsRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListTenantsRequest {
                page_token: "forged".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let err = client()
            .list_tenants(authed(req, &token))
            .await
            .unwrap_err();
        assert_bad_field(&err, field);
    }
    // A token is bound to its filters.
    let first = client()
        .list_tenants(authed(
            ListTenantsRequest {
                page_size: 1,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let err = client()
        .list_tenants(authed(
            ListTenantsRequest {
                page_size: 1,
                page_token: first.next_page_token,
                show_deleted: true,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_bad_field(&err, "page_token");
}

#[tokio::test]
async fn another_tenant_is_not_found_and_unchanged() {
    let a = app().new_tenant().await;
    let b = app().new_tenant().await;
    let a_id = a.id.to_string();
    let token = &b.owner_token;
    let err = client()
        .get_tenant(authed(
            GetTenantRequest {
                tenant_id: a_id.clone(),
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "TENANT_NOT_FOUND");
    let err = client()
        .update_tenant(authed(
            UpdateTenantRequest {
                tenant: Some(Tenant {
                    tenant_id: a_id.clone(),
                    display_name: "pwned".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["display_name".into()],
                }),
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "TENANT_NOT_FOUND");
    let err = client()
        .delete_tenant(authed(
            DeleteTenantRequest {
                tenant_id: a_id.clone(),
                etag: String::new(),
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "TENANT_NOT_FOUND");
    let err = client()
        .undelete_tenant(authed(
            UndeleteTenantRequest {
                tenant_id: a_id.clone(),
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "TENANT_NOT_FOUND");
    // An id that exists nowhere looks exactly the same.
    let err = client()
        .get_tenant(authed(
            GetTenantRequest {
                tenant_id: Uuid::now_v7().to_string(),
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "TENANT_NOT_FOUND");
    let err = client()
        .get_tenant(authed(
            GetTenantRequest {
                tenant_id: "x".into(),
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_bad_field(&err, "tenant_id");

    let after = client()
        .get_tenant(authed(GetTenantRequest { tenant_id: a_id }, &a.owner_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, a.tenant);
}
