//! Service-to-service propagation: a caller server handles a request by
//! calling a callee server through `TenantContext::propagate`; the callee
//! sees the same tenant, principal and request id, and a smaller deadline.
//! Both sit behind the real auth layer; the callee echoes what it saw.

use std::time::Duration;

use mosaic_proto::identity::member_service_client::MemberServiceClient;
use mosaic_proto::identity::member_service_server::{MemberService, MemberServiceServer};
use mosaic_proto::identity::{
    AddMemberRequest, GetMemberRequest, ListMembersRequest, ListMembersResponse, Member,
    RemoveMemberRequest, RemoveMemberResponse, UpdateMemberRequest,
};
use mosaic_tenant::{AuthLayer, TenantContext, TokenVerifier};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::harness::app;

/// Echoes the context it was called with: tenant, principal (as user_id),
/// request id (as email) and the milliseconds left (as display_name).
struct Callee;

/// Calls the callee with the caller's context.
struct Caller {
    callee: Channel,
}

#[tonic::async_trait]
impl MemberService for Callee {
    async fn get_member(&self, req: Request<GetMemberRequest>) -> Result<Response<Member>, Status> {
        let ctx = TenantContext::of(&req)?;
        Ok(Response::new(Member {
            tenant_id: ctx.tenant().map(|t| t.to_string()).unwrap_or_default(),
            user_id: ctx.principal().to_owned(),
            email: ctx.request_id().to_owned(),
            display_name: ctx
                .remaining()
                .map(|d| d.as_millis().to_string())
                .unwrap_or_default(),
            ..Default::default()
        }))
    }
    async fn add_member(&self, _: Request<AddMemberRequest>) -> Result<Response<Member>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn list_members(
        &self,
        _: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn update_member(
        &self,
        _: Request<UpdateMemberRequest>,
    ) -> Result<Response<Member>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn remove_member(
        &self,
        _: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
}

#[tonic::async_trait]
impl MemberService for Caller {
    async fn get_member(&self, req: Request<GetMemberRequest>) -> Result<Response<Member>, Status> {
        let ctx = TenantContext::of(&req)?;
        // Spend a little of the budget so the callee's deadline is visibly smaller.
        tokio::time::sleep(Duration::from_millis(50)).await;
        MemberServiceClient::with_interceptor(self.callee.clone(), ctx.propagate())
            .get_member(GetMemberRequest::default())
            .await
    }
    async fn add_member(&self, _: Request<AddMemberRequest>) -> Result<Response<Member>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn list_members(
        &self,
        _: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn update_member(
        &self,
        _: Request<UpdateMemberRequest>,
    ) -> Result<Response<Member>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn remove_member(
        &self,
        _: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
}

async fn spawn<S>(svc: MemberServiceServer<S>) -> Channel
where
    S: MemberService,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = AuthLayer::new(TokenVerifier::new(app().auth.clone()).unwrap(), Vec::new());
    tokio::spawn(
        Server::builder()
            .layer(layer)
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

#[tokio::test]
async fn callee_sees_the_callers_context_and_a_smaller_deadline() {
    let callee = spawn(MemberServiceServer::new(Callee)).await;
    let caller = spawn(MemberServiceServer::new(Caller { callee })).await;

    let tenant = mosaic_core::TenantId::new();
    let principal = format!("user:{}", Uuid::now_v7());
    let token = app().token(Some(tenant), &principal, &["member"]);
    let request_id = format!("prop-{}", Uuid::new_v4());
    let mut req = crate::harness::authed(GetMemberRequest::default(), &token);
    req.metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    req.set_timeout(Duration::from_secs(2));

    let seen = MemberServiceClient::new(caller)
        .get_member(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.tenant_id, tenant.to_string());
    assert_eq!(seen.user_id, principal);
    assert_eq!(seen.email, request_id);
    let left: u64 = seen
        .display_name
        .parse()
        .expect("the callee saw a deadline");
    assert!(left < 1950, "deadline not reduced: {left} ms left of 2000");
    assert!(left > 1000, "deadline far too small: {left} ms");
}
