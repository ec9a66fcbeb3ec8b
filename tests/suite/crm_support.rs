//! The crm service under test, and helpers shared by the `crm_*` tests.
//!
//! crm is served by the suite (see `harness`). Each test makes its own
//! tenant ([`CrmTenant::new`], created through identity), so tests share one
//! database without seeing each other's rows.

use mosaic_core::TenantId;
use mosaic_proto::crm::{
    Company, Contact, CreateCompanyRequest, CreateContactRequest,
    activity_service_client::ActivityServiceClient, company_service_client::CompanyServiceClient,
    contact_service_client::ContactServiceClient, crm_audit_service_client::CrmAuditServiceClient,
    deal_service_client::DealServiceClient, score_service_client::ScoreServiceClient,
    signal_service_client::SignalServiceClient,
};
use sqlx::{Connection, PgConnection};
use tonic::Request;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::harness::{app, authed};

/// A channel to crm on the calling test's runtime.
pub(crate) fn channel() -> Channel {
    app().channel()
}

pub(crate) fn companies() -> CompanyServiceClient<Channel> {
    CompanyServiceClient::new(channel())
}
pub(crate) fn contacts_on(channel: Channel) -> ContactServiceClient<Channel> {
    ContactServiceClient::new(channel)
}
pub(crate) fn contacts() -> ContactServiceClient<Channel> {
    ContactServiceClient::new(channel())
}
pub(crate) fn deals() -> DealServiceClient<Channel> {
    DealServiceClient::new(channel())
}
pub(crate) fn activities() -> ActivityServiceClient<Channel> {
    ActivityServiceClient::new(channel())
}
pub(crate) fn signals() -> SignalServiceClient<Channel> {
    SignalServiceClient::new(channel())
}
pub(crate) fn scores() -> ScoreServiceClient<Channel> {
    ScoreServiceClient::new(channel())
}
pub(crate) fn audit() -> CrmAuditServiceClient<Channel> {
    CrmAuditServiceClient::new(channel())
}

/// A fresh tenant, with nothing in crm.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CrmTenant {
    pub(crate) id: TenantId,
}

impl CrmTenant {
    /// A fresh tenant (made through identity: a tenant that was never
    /// created is refused by every service).
    pub(crate) async fn new() -> Self {
        Self {
            id: app().new_tenant().await.id,
        }
    }

    /// A token of this tenant with `role` and a fresh principal.
    pub(crate) fn token(&self, role: &str) -> String {
        app().token(Some(self.id), &format!("user:{}", Uuid::now_v7()), &[role])
    }

    /// `msg` as an admin of this tenant (admins may call every crm method).
    pub(crate) fn req<T>(&self, msg: T) -> Request<T> {
        authed(msg, &self.token("admin"))
    }

    /// `msg` as `role`.
    pub(crate) fn as_role<T>(&self, role: &str, msg: T) -> Request<T> {
        authed(msg, &self.token(role))
    }

    pub(crate) async fn company(&self, name: &str) -> Company {
        companies()
            .create_company(self.req(CreateCompanyRequest {
                company: Some(Company {
                    display_name: name.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            }))
            .await
            .expect("create company")
            .into_inner()
    }

    pub(crate) async fn contact(&self, email: &str) -> Contact {
        contacts()
            .create_contact(self.req(CreateContactRequest {
                contact: Some(Contact {
                    email: email.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            }))
            .await
            .expect("create contact")
            .into_inner()
    }

    /// Rows of `table` in this tenant, counted behind the API (superuser).
    pub(crate) async fn count(&self, table: &str) -> i64 {
        let mut db = app().admin_db().await;
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM crm.{table} WHERE tenant_id = $1"
        ))
        .bind(self.id)
        .fetch_one(&mut db)
        .await
        .expect("count")
    }
}

impl CrmTenant {
    /// Audit events of this tenant by action, counted behind the API.
    pub(crate) async fn audit_counts(&self) -> Vec<(String, i64)> {
        let mut db = app().admin_db().await;
        sqlx::query_as(
            "SELECT action, count(*) FROM crm.audit_events WHERE tenant_id = $1 \
             GROUP BY action ORDER BY action",
        )
        .bind(self.id)
        .fetch_all(&mut db)
        .await
        .expect("audit counts")
    }

    /// The resource ids of this tenant's audit events with `action`, oldest first.
    pub(crate) async fn audited(&self, action: &str) -> Vec<String> {
        let mut db = app().admin_db().await;
        sqlx::query_scalar(
            "SELECT resource_id FROM crm.audit_events WHERE tenant_id = $1 AND action = $2 \
             ORDER BY event_id",
        )
        .bind(self.id)
        .bind(action)
        .fetch_all(&mut db)
        .await
        .expect("audited")
    }
}

/// A connection as the crm runtime role (RLS applies).
pub(crate) async fn crm_role_db() -> PgConnection {
    let url = app().db_config("crm").url;
    PgConnection::connect(url.expose())
        .await
        .expect("crm runtime connection")
}

/// A unique email.
pub(crate) fn email(tag: &str) -> String {
    format!("{tag}-{}@example.com", Uuid::new_v4().simple())
}
