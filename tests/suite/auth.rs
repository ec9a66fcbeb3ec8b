//! The auth layer end to end: bad tokens, roles, request ids, public methods.

use std::time::Duration;

use mosaic_core::TenantId;
use mosaic_proto::common::ListAuditEventsRequest;
use mosaic_proto::identity::{
    AddMemberRequest, GetMemberRequest, GetTenantRequest, Role,
    audit_service_client::AuditServiceClient, member_service_client::MemberServiceClient,
    tenant_service_client::TenantServiceClient,
};
use mosaic_tenant::{AuthConfig, Claims, KeyMaterial, TokenSigner};
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

use crate::harness::{app, assert_error, authed};

fn sign(
    config: &AuthConfig,
    key: &KeyMaterial,
    mut edit: impl FnMut(&mut Claims),
    tenant: TenantId,
) -> String {
    let mut claims = Claims::new(
        config,
        "user:x".into(),
        Some(tenant),
        vec!["owner".into()],
        Duration::from_secs(60),
    );
    edit(&mut claims);
    TokenSigner::new(key).unwrap().sign(&claims).unwrap()
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() {
    let t = app().new_tenant().await;
    let config = &app().auth;
    let good_key = &config.key;
    let other_key = KeyMaterial::Hs256(b"another-secret-another-secret-0123456789".to_vec());
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "TOKEN_MISSING"),
        (Some("Basic dXNlcjpwYXNz".into()), "TOKEN_MALFORMED"),
        (Some("Bearer ".into()), "TOKEN_MALFORMED"),
        (Some("Bearer not.a.jwt".into()), "TOKEN_INVALID"),
        (
            Some(format!("Bearer {}", sign(config, &other_key, |_| {}, t.id))),
            "TOKEN_INVALID",
        ),
        (
            Some(format!(
                "Bearer {}",
                sign(config, good_key, |c| c.aud = "elsewhere".into(), t.id)
            )),
            "TOKEN_INVALID",
        ),
        (
            Some(format!(
                "Bearer {}",
                sign(config, good_key, |c| c.iss = "someone".into(), t.id)
            )),
            "TOKEN_INVALID",
        ),
        (
            Some(format!(
                "Bearer {}",
                sign(
                    config,
                    good_key,
                    |c| {
                        c.exp = c.iat - 120;
                        c.iat -= 180;
                    },
                    t.id
                )
            )),
            "TOKEN_EXPIRED",
        ),
        (
            Some(format!(
                "Bearer {}",
                sign(config, good_key, |c| c.tid = None, t.id)
            )),
            "TOKEN_INVALID",
        ),
    ];
    for (header, reason) in cases {
        let mut req = Request::new(GetTenantRequest {
            tenant_id: t.id.to_string(),
        });
        if let Some(h) = &header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        let err = TenantServiceClient::new(app().channel())
            .get_tenant(req)
            .await
            .unwrap_err();
        assert_error(&err, Code::Unauthenticated, reason);
    }
}

#[tokio::test]
async fn roles_are_checked() {
    let t = app().new_tenant().await;
    let members = MemberServiceClient::new(app().channel());
    let add = AddMemberRequest {
        email: "x@example.com".into(),
        role: Role::Member as i32,
        ..Default::default()
    };
    for role in ["viewer", "member"] {
        let err = members
            .clone()
            .add_member(authed(add.clone(), &t.token(role)))
            .await
            .unwrap_err();
        assert_error(&err, Code::PermissionDenied, "PERMISSION_DENIED");
    }
    // A platform token names no tenant: tenant-scoped methods refuse it.
    let err = members
        .clone()
        .get_member(authed(
            GetMemberRequest {
                user_id: t.owner.to_string(),
            },
            &app().platform_token(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // An unknown role string grants nothing.
    let odd = app().token(Some(t.id), "user:odd", &["superuser"]);
    let err = members
        .clone()
        .get_member(authed(
            GetMemberRequest {
                user_id: t.owner.to_string(),
            },
            &odd,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn request_ids_are_kept_and_audited() {
    let t = app().new_tenant().await;
    let request_id = format!("test-{}", Uuid::new_v4());
    let mut req = authed(
        AddMemberRequest {
            email: format!("r-{}@example.com", Uuid::new_v4().simple()),
            role: Role::Member as i32,
            ..Default::default()
        },
        &t.owner_token,
    );
    req.metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    let resp = MemberServiceClient::new(app().channel())
        .add_member(req)
        .await
        .unwrap();
    assert_eq!(
        resp.metadata().get("x-request-id").unwrap(),
        request_id.as_str()
    );
    let events = AuditServiceClient::new(app().channel())
        .list_audit_events(authed(
            ListAuditEventsRequest {
                resource_type: "member".into(),
                ..Default::default()
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.request_id == request_id && e.action == "member.add")
    );
    assert!(events.iter().all(|e| e.resource_type == "member"));

    // Without one, the server makes one and returns it.
    let resp = TenantServiceClient::new(app().channel())
        .get_tenant(authed(
            GetTenantRequest {
                tenant_id: t.id.to_string(),
            },
            &t.owner_token,
        ))
        .await
        .unwrap();
    assert!(
        Uuid::parse_str(
            resp.metadata()
                .get("x-request-id")
                .unwrap()
                .to_str()
                .unwrap()
        )
        .is_ok()
    );
}

#[tokio::test]
async fn health_is_public_and_serving() {
    let mut health = HealthClient::new(app().channel());
    for _ in 0..50 {
        let status = health
            .check(HealthCheckRequest {
                service: "mosaic.identity.v1.TenantService".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("identity never became SERVING");
}
