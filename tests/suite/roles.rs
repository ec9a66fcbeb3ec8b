//! The README's role table is the contract: every method served has a row, and
//! every row holds. Each method is called, on a fresh tenant, with a token one
//! role short of its minimum (PERMISSION_DENIED) and with its minimum (anything
//! but PERMISSION_DENIED or UNAUTHENTICATED: most requests here are empty, so
//! INVALID_ARGUMENT or NOT_FOUND is expected past the role check). A public
//! method is called without a token and must not be refused for lacking one.
//!
//! The calls go through a raw-bytes codec, so a new method needs a row in the
//! README and nothing here.

use std::collections::BTreeMap;

use futures::future::join_all;
use mosaic_proto::identity::{
    DeleteTenantRequest, GetTenantRequest, Tenant, UndeleteTenantRequest, UpdateTenantRequest,
};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::harness::{TestTenant, app, authed};

/// The roles a tenant token may carry, weakest first.
const TENANT_ROLES: [&str; 4] = ["viewer", "member", "admin", "owner"];

/// Who a row says may call a method.
#[derive(Debug, Clone, PartialEq)]
enum Minimum {
    Tenant(&'static str),
    PlatformAdmin,
    Public,
    Service(String),
}

impl Minimum {
    fn parse(cell: &str) -> Self {
        match cell {
            "platform admin" => Self::PlatformAdmin,
            "public" => Self::Public,
            svc if svc.starts_with("svc:") => Self::Service(svc.to_owned()),
            role => Self::Tenant(
                TENANT_ROLES
                    .into_iter()
                    .find(|r| *r == role)
                    .unwrap_or_else(|| panic!("README role table: unknown role {role:?}")),
            ),
        }
    }
}

/// `/package.Service/Method` → minimum, from the README's `## Roles` table.
fn table() -> BTreeMap<String, Minimum> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Roles\n")
        .nth(1)
        .expect("README has a ## Roles section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let method = cells[1].trim_matches('`');
        let previous = rows.insert(format!("/{method}"), Minimum::parse(cells[2]));
        assert!(previous.is_none(), "README role table: {method} twice");
    }
    rows
}

/// Every Mosaic method the descriptor set (what reflection serves) names, with
/// whether the client streams.
fn served() -> BTreeMap<String, bool> {
    let set = prost_types::FileDescriptorSet::decode(mosaic_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut methods = BTreeMap::new();
    for file in set.file {
        let package = file.package();
        if !package.starts_with("mosaic.") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                methods.insert(
                    format!("/{package}.{}/{}", service.name(), method.name()),
                    method.client_streaming(),
                );
            }
        }
    }
    methods
}

#[test]
fn every_served_method_has_a_row() {
    let rows = table();
    let served = served();
    let missing: Vec<_> = served.keys().filter(|m| !rows.contains_key(*m)).collect();
    let stale: Vec<_> = rows.keys().filter(|m| !served.contains_key(*m)).collect();
    assert!(
        missing.is_empty(),
        "methods without a README role row: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "README role rows for no method: {stale:?}"
    );
}

#[tokio::test]
async fn every_method_refuses_the_role_below_and_takes_its_minimum() {
    let served = served();
    let checks = table().into_iter().map(|(method, minimum)| {
        let streaming = served.get(&method).copied().unwrap_or_default();
        async move { check(&method, &minimum, streaming).await }
    });
    let failures: Vec<String> = join_all(checks).await.into_iter().flatten().collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Both calls of one row on a fresh tenant; the disagreements found.
async fn check(method: &str, minimum: &Minimum, streaming: bool) -> Vec<String> {
    let tenant = app().new_tenant().await;
    let (below, at) = match minimum {
        Minimum::Tenant(role) => {
            let below = match TENANT_ROLES.iter().position(|r| r == role) {
                Some(0) | None => "svc:nothing".to_owned(),
                Some(i) => TENANT_ROLES[i - 1].to_owned(),
            };
            (Some(tenant.token(&below)), Some(tenant.token(role)))
        }
        Minimum::PlatformAdmin => (Some(tenant.token("owner")), Some(app().platform_token())),
        Minimum::Public => (None, None),
        Minimum::Service(role) => (
            Some(tenant.token("owner")),
            Some(app().token(None, "service:roles-test", &[role])),
        ),
    };
    let mut failures = Vec::new();
    if let Some(token) = &below {
        let status = call(method, &tenant, Some(token), streaming).await;
        if status.code() != Code::PermissionDenied {
            failures.push(format!(
                "{method}: below {minimum:?} got {:?}, not PERMISSION_DENIED: {}",
                status.code(),
                status.message()
            ));
        }
    }
    let status = call(method, &tenant, at.as_deref(), streaming).await;
    let reason = status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default();
    // A public method may refuse its own credential (ExchangeApiKey's
    // API_KEY_INVALID); the auth layer's TOKEN_* refusals mean it was not public.
    let refused = match minimum {
        Minimum::Public => reason.starts_with("TOKEN_"),
        _ => matches!(
            status.code(),
            Code::PermissionDenied | Code::Unauthenticated
        ),
    };
    if refused {
        failures.push(format!(
            "{method}: {minimum:?} refused with {:?}: {}",
            status.code(),
            status.message()
        ));
    }
    failures
}

/// Calls `method` with a request aimed at `tenant` (or an empty one) and
/// returns its status (`Ok` for success).
async fn call(method: &str, tenant: &TestTenant, token: Option<&str>, streaming: bool) -> Status {
    let body = request_for(method, tenant);
    let mut grpc = tonic::client::Grpc::new(app().channel());
    grpc.ready().await.expect("channel ready");
    let path: http::uri::PathAndQuery = method.parse().expect("method path");
    let result = if streaming {
        let stream = tokio_stream::iter([body]);
        let request = match token {
            Some(t) => authed(stream, t),
            None => Request::new(stream),
        };
        grpc.client_streaming(request, path, Raw).await.map(|_| ())
    } else {
        let request = match token {
            Some(t) => authed(body, t),
            None => Request::new(body),
        };
        grpc.unary(request, path, Raw).await.map(|_| ())
    };
    result.err().unwrap_or_else(|| Status::ok(""))
}

/// The request body: tenant methods name the tenant (they check it before the
/// role); everything else is an empty message.
fn request_for(method: &str, tenant: &TestTenant) -> Vec<u8> {
    let id = tenant.id.to_string();
    match method.rsplit('/').next().unwrap_or_default() {
        _ if !method.starts_with("/mosaic.identity.v1.TenantService/") => Vec::new(),
        "GetTenant" => GetTenantRequest { tenant_id: id }.encode_to_vec(),
        "DeleteTenant" => DeleteTenantRequest {
            tenant_id: id,
            etag: String::new(),
        }
        .encode_to_vec(),
        "UndeleteTenant" => UndeleteTenantRequest { tenant_id: id }.encode_to_vec(),
        "UpdateTenant" => UpdateTenantRequest {
            tenant: Some(Tenant {
                tenant_id: id,
                display_name: "Renamed".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
        }
        .encode_to_vec(),
        _ => Vec::new(),
    }
}

/// A codec that passes encoded messages through untouched.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Self::Encoder {
        Raw
    }

    fn decoder(&mut self) -> Self::Decoder {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}
