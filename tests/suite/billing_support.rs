//! The billing service under test, and helpers shared by the `billing_*` tests.
//!
//! Each test makes its own tenants (through identity), opens their accounts
//! with a platform top-up, and calls billing over gRPC as the tenant (member
//! tokens) or as a platform admin (top-ups, refunds, reconcile).

use mosaic_core::TenantId;
use mosaic_proto::billing::{
    Account, ConsumeRequest, GetAccountRequest, Hold, LedgerEntry, ListLedgerRequest,
    ReconcileRequest, ReconcileResponse, ReserveRequest, TopUpRequest,
    billing_audit_service_client::BillingAuditServiceClient,
    credit_service_client::CreditServiceClient,
};
use sqlx::{Connection, PgConnection};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::harness::{TestTenant, app, authed};

pub(crate) fn credits() -> CreditServiceClient<Channel> {
    CreditServiceClient::new(app().channel())
}

pub(crate) fn billing_audit() -> BillingAuditServiceClient<Channel> {
    BillingAuditServiceClient::new(app().channel())
}

/// A fresh idempotency key.
pub(crate) fn key() -> String {
    Uuid::now_v7().to_string()
}

/// A tenant with an owner and a member token, and a platform token.
pub(crate) struct BillingTenant {
    pub(crate) tenant: TestTenant,
    pub(crate) member: String,
    pub(crate) platform: String,
}

impl BillingTenant {
    /// A new tenant; with `credits > 0`, its account is opened by a top-up of them.
    pub(crate) async fn new(credits: i64) -> Self {
        let tenant = app().new_tenant().await;
        let member = tenant.token("member");
        let t = Self {
            tenant,
            member,
            platform: app().platform_token(),
        };
        if credits > 0 {
            t.top_up(credits).await.expect("first top-up");
        }
        t
    }

    pub(crate) fn id(&self) -> TenantId {
        self.tenant.id
    }

    pub(crate) async fn top_up(&self, amount: i64) -> Result<LedgerEntry, Status> {
        credits()
            .top_up(authed(
                TopUpRequest {
                    tenant_id: self.id().to_string(),
                    amount,
                    idempotency_key: key(),
                    reference: "payment".into(),
                },
                &self.platform,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    pub(crate) async fn consume(&self, amount: i64, key: &str) -> Result<LedgerEntry, Status> {
        credits()
            .consume(authed(
                ConsumeRequest {
                    amount,
                    idempotency_key: key.to_owned(),
                    reference: "message".into(),
                    ..Default::default()
                },
                &self.member,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    pub(crate) async fn reserve(&self, amount: i64, key: &str) -> Result<Hold, Status> {
        credits()
            .reserve(authed(
                ReserveRequest {
                    amount,
                    idempotency_key: key.to_owned(),
                    reference: "ai call".into(),
                    ..Default::default()
                },
                &self.member,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    pub(crate) async fn account(&self) -> Account {
        credits()
            .get_account(authed(GetAccountRequest::default(), &self.member))
            .await
            .expect("get account")
            .into_inner()
    }

    /// Every ledger entry, newest first.
    pub(crate) async fn ledger(&self) -> Vec<LedgerEntry> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = credits()
                .list_ledger(authed(
                    ListLedgerRequest {
                        page_size: 1000,
                        page_token,
                        ..Default::default()
                    },
                    &self.member,
                ))
                .await
                .expect("list ledger")
                .into_inner();
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                return entries;
            }
            page_token = page.next_page_token;
        }
    }

    pub(crate) async fn reconcile(&self) -> ReconcileResponse {
        credits()
            .reconcile(authed(
                ReconcileRequest {
                    tenant_id: self.id().to_string(),
                },
                &self.platform,
            ))
            .await
            .expect("reconcile")
            .into_inner()
    }
}

/// A connection as the billing runtime role.
pub(crate) async fn billing_role_db() -> PgConnection {
    let url = app().db_config("billing").url;
    PgConnection::connect(url.expose())
        .await
        .expect("billing runtime connection")
}

/// The value of `key` in the status's `ErrorInfo.metadata`.
pub(crate) fn error_metadata(status: &Status, key: &str) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

/// Asserts a call failed with `code`.
#[track_caller]
pub(crate) fn assert_code<T: std::fmt::Debug>(result: &Result<T, Status>, code: Code) {
    match result {
        Err(status) => assert_eq!(status.code(), code, "{status:?}"),
        Ok(reply) => panic!("expected {code:?}, got {reply:?}"),
    }
}
