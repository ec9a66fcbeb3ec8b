//! ApiKeyService and TokenService: create (secret once, hash stored), list,
//! revoke, exchange; isolation; idempotency.

use std::time::Duration;

use mosaic_proto::identity::{
    CreateApiKeyRequest, ExchangeApiKeyRequest, GetTenantRequest, ListApiKeysRequest,
    RevokeApiKeyRequest, Role, api_key_service_client::ApiKeyServiceClient,
    tenant_service_client::TenantServiceClient, token_service_client::TokenServiceClient,
};
use tonic::{Code, Request};
use uuid::Uuid;

use crate::harness::{app, assert_bad_field, assert_error, authed};

fn keys() -> ApiKeyServiceClient<tonic::transport::Channel> {
    ApiKeyServiceClient::new(app().channel())
}

fn exchange(secret: &str) -> Request<ExchangeApiKeyRequest> {
    Request::new(ExchangeApiKeyRequest {
        api_key: secret.into(),
        ttl_seconds: 0,
    })
}

fn create(role: Role) -> CreateApiKeyRequest {
    CreateApiKeyRequest {
        display_name: "backend".into(),
        role: role as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn create_exchange_use_revoke() {
    let t = app().new_tenant().await;
    let created = keys()
        .create_api_key(authed(create(Role::Viewer), &t.owner_token))
        .await
        .unwrap()
        .into_inner();
    let key = created.api_key.unwrap();
    assert!(created.secret.starts_with("mosaic_"));

    // Only a hash is stored.
    let mut db = app().admin_db().await;
    let (hash, stored_prefix): (Vec<u8>, String) = sqlx::query_as(
        "SELECT secret_hash, secret_prefix FROM identity.api_keys WHERE api_key_id = $1",
    )
    .bind(Uuid::parse_str(&key.api_key_id).unwrap())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(hash.len(), 32, "a SHA-256, not the secret");
    assert!(
        stored_prefix.chars().count() <= 9,
        "only a short prefix to recognise the key"
    );

    // The token it buys works, with the key's role.
    let token = TokenServiceClient::new(app().channel())
        .exchange_api_key(exchange(&created.secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token.token_type, "Bearer");
    let tenants = TenantServiceClient::new(app().channel());
    tenants
        .clone()
        .get_tenant(authed(
            GetTenantRequest {
                tenant_id: t.id.to_string(),
            },
            &token.access_token,
        ))
        .await
        .unwrap();
    let err = keys()
        .create_api_key(authed(create(Role::Viewer), &token.access_token))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "a viewer key cannot make keys"
    );

    let listed = keys()
        .list_api_keys(authed(ListApiKeysRequest::default(), &t.owner_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.api_keys, std::slice::from_ref(&key));

    let revoked = keys()
        .revoke_api_key(authed(
            RevokeApiKeyRequest {
                api_key_id: key.api_key_id.clone(),
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoke_time.is_some());
    let again = keys()
        .revoke_api_key(authed(
            RevokeApiKeyRequest {
                api_key_id: key.api_key_id.clone(),
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, revoked);
    let err = TokenServiceClient::new(app().channel())
        .exchange_api_key(exchange(&created.secret))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "API_KEY_REVOKED");
    let hidden = keys()
        .list_api_keys(authed(ListApiKeysRequest::default(), &t.owner_token))
        .await
        .unwrap()
        .into_inner();
    assert!(hidden.api_keys.is_empty());
    let shown = keys()
        .list_api_keys(authed(
            ListApiKeysRequest {
                show_revoked: true,
                ..Default::default()
            },
            &t.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.api_keys.len(), 1);
}

#[tokio::test]
async fn forged_and_foreign_secrets_are_refused_alike() {
    let a = app().new_tenant().await;
    let b = app().new_tenant().await;
    let secret = keys()
        .create_api_key(authed(create(Role::Member), &a.owner_token))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut tampered = secret.clone();
    tampered.pop();
    tampered.push(if secret.ends_with('A') { 'B' } else { 'A' });
    // Same key id, B's tenant: the lookup happens inside B and finds nothing.
    let moved = secret.replacen(
        &a.id.uuid().simple().to_string(),
        &b.id.uuid().simple().to_string(),
        1,
    );
    let client = TokenServiceClient::new(app().channel());
    for bad in [
        tampered,
        moved,
        "mosaic_x".into(),
        String::new(),
        "Bearer nonsense".into(),
    ] {
        let err = client
            .clone()
            .exchange_api_key(exchange(&bad))
            .await
            .unwrap_err();
        assert_error(&err, Code::Unauthenticated, "API_KEY_INVALID");
    }
    let err = client
        .clone()
        .exchange_api_key(Request::new(ExchangeApiKeyRequest {
            api_key: secret.clone(),
            ttl_seconds: 5,
        }))
        .await
        .unwrap_err();
    assert_bad_field(&err, "ttl_seconds");
}

#[tokio::test]
async fn keys_of_another_tenant_are_not_found() {
    let a = app().new_tenant().await;
    let b = app().new_tenant().await;
    let key = keys()
        .create_api_key(authed(create(Role::Member), &a.owner_token))
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    let err = keys()
        .revoke_api_key(authed(
            RevokeApiKeyRequest {
                api_key_id: key.api_key_id.clone(),
            },
            &b.owner_token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "API_KEY_NOT_FOUND");
    let b_keys = keys()
        .list_api_keys(authed(
            ListApiKeysRequest {
                show_revoked: true,
                ..Default::default()
            },
            &b.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(b_keys.api_keys.is_empty());
    let a_keys = keys()
        .list_api_keys(authed(ListApiKeysRequest::default(), &a.owner_token))
        .await
        .unwrap()
        .into_inner();
    assert!(
        a_keys.api_keys[0].revoke_time.is_none(),
        "A's key is untouched"
    );
}

#[tokio::test]
async fn bad_keys_and_idempotent_retries() {
    let t = app().new_tenant().await;
    let past = prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    };
    for (req, field) in [
        (create(Role::Owner), "role"),
        (
            CreateApiKeyRequest {
                display_name: String::new(),
                ..create(Role::Member)
            },
            "display_name",
        ),
        (
            CreateApiKeyRequest {
                role: 77,
                ..create(Role::Member)
            },
            "role",
        ),
        (
            CreateApiKeyRequest {
                expire_time: Some(past),
                ..create(Role::Member)
            },
            "expire_time",
        ),
    ] {
        let err = keys()
            .create_api_key(authed(req, &t.owner_token))
            .await
            .unwrap_err();
        assert_bad_field(&err, field);
    }
    let err = keys()
        .create_api_key(authed(create(Role::Member), &t.token("member")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let req = CreateApiKeyRequest {
        request_id: Uuid::new_v4().to_string(),
        ..create(Role::Member)
    };
    let first = keys()
        .create_api_key(authed(req.clone(), &t.owner_token))
        .await
        .unwrap()
        .into_inner();
    let retry = keys()
        .create_api_key(authed(req, &t.owner_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.api_key, retry.api_key);
    assert!(!first.secret.is_empty());
    assert!(
        retry.secret.is_empty(),
        "the secret is shown once, never stored for replay"
    );
}

#[tokio::test]
async fn expired_keys_and_deleted_tenants_buy_no_tokens() {
    let t = app().new_tenant().await;
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let req = CreateApiKeyRequest {
        expire_time: Some(prost_types::Timestamp {
            seconds: soon.timestamp(),
            nanos: soon.timestamp_subsec_nanos() as i32,
        }),
        ..create(Role::Member)
    };
    let expiring = keys()
        .create_api_key(authed(req, &t.owner_token))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let lasting = keys()
        .create_api_key(authed(create(Role::Member), &t.owner_token))
        .await
        .unwrap()
        .into_inner()
        .secret;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let client = TokenServiceClient::new(app().channel());
    let err = client
        .clone()
        .exchange_api_key(exchange(&expiring))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "API_KEY_EXPIRED");

    TenantServiceClient::new(app().channel())
        .delete_tenant(authed(
            mosaic_proto::identity::DeleteTenantRequest {
                tenant_id: t.id.to_string(),
                etag: String::new(),
            },
            &t.owner_token,
        ))
        .await
        .unwrap();
    let err = client
        .clone()
        .exchange_api_key(exchange(&lasting))
        .await
        .unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "TENANT_DELETED");
}
