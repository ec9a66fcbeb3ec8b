//! MemberService: add, get, list, update, remove; the last owner; isolation.

use mosaic_proto::common::ListAuditEventsRequest;
use mosaic_proto::identity::{
    AddMemberRequest, GetMemberRequest, ListMembersRequest, Member, RemoveMemberRequest, Role,
    UpdateMemberRequest, audit_service_client::AuditServiceClient,
    member_service_client::MemberServiceClient,
};
use prost_types::FieldMask;
use tonic::Code;
use uuid::Uuid;

use crate::harness::{app, assert_bad_field, assert_error, authed};

fn client() -> MemberServiceClient<tonic::transport::Channel> {
    MemberServiceClient::new(app().channel())
}

fn add(email: &str, role: Role) -> AddMemberRequest {
    AddMemberRequest {
        email: email.into(),
        role: role as i32,
        display_name: "Ada".into(),
        request_id: String::new(),
    }
}

fn email() -> String {
    format!("Member-{}@Example.com", Uuid::new_v4().simple())
}

fn role_mask() -> Option<FieldMask> {
    Some(FieldMask {
        paths: vec!["role".into()],
    })
}

#[tokio::test]
async fn add_get_list_update_remove() {
    let t = app().new_tenant().await;
    let admin = t.token("admin");
    let e = email();
    let m = client()
        .add_member(authed(add(&e, Role::Member), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.email, e.to_lowercase());
    assert_eq!(m.role, Role::Member as i32);
    assert_eq!(m.tenant_id, t.id.to_string());

    let got = client()
        .get_member(authed(
            GetMemberRequest {
                user_id: m.user_id.clone(),
            },
            &t.token("viewer"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, m);

    let list = client()
        .list_members(authed(
            ListMembersRequest {
                page_size: 1,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.members.len(), 1);
    let rest = client()
        .list_members(authed(
            ListMembersRequest {
                page_size: 10,
                page_token: list.next_page_token,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.members.len(),
        1,
        "owner and the new member, one per page"
    );
    assert!(rest.next_page_token.is_empty());
    let owners = client()
        .list_members(authed(
            ListMembersRequest {
                role: Role::Owner as i32,
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(owners.members.len(), 1);
    assert_eq!(owners.members[0].user_id, t.owner.to_string());

    let updated = client()
        .update_member(authed(
            UpdateMemberRequest {
                member: Some(Member {
                    user_id: m.user_id.clone(),
                    role: Role::Viewer as i32,
                    etag: m.etag.clone(),
                    ..Default::default()
                }),
                update_mask: role_mask(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.role, Role::Viewer as i32);
    assert_eq!(updated.display_name, "Ada");
    let err = client()
        .update_member(authed(
            UpdateMemberRequest {
                member: Some(Member {
                    user_id: m.user_id.clone(),
                    role: Role::Admin as i32,
                    etag: m.etag.clone(),
                    ..Default::default()
                }),
                update_mask: role_mask(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::Aborted, "ETAG_MISMATCH");

    client()
        .remove_member(authed(
            RemoveMemberRequest {
                user_id: m.user_id.clone(),
                etag: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let err = client()
        .get_member(authed(
            GetMemberRequest {
                user_id: m.user_id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "MEMBER_NOT_FOUND");

    let actions: Vec<String> = AuditServiceClient::new(app().channel())
        .list_audit_events(authed(
            ListAuditEventsRequest {
                resource_id: m.user_id.clone(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["member.remove", "member.update", "member.add"]);
}

#[tokio::test]
async fn duplicate_members_and_roles() {
    let t = app().new_tenant().await;
    let e = email();
    client()
        .add_member(authed(add(&e, Role::Member), &t.owner_token))
        .await
        .unwrap();
    let err = client()
        .add_member(authed(add(&e.to_uppercase(), Role::Admin), &t.owner_token))
        .await
        .unwrap_err();
    assert_error(&err, Code::AlreadyExists, "MEMBER_EXISTS");
    assert_eq!(crate::harness::bad_fields(&err), ["email"]);

    // Only owners make owners; viewers add nobody.
    let err = client()
        .add_member(authed(add(&email(), Role::Owner), &t.token("admin")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client()
        .add_member(authed(add(&email(), Role::Member), &t.token("viewer")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    for (req, field) in [
        (add("nope", Role::Member), "email"),
        (add(&email(), Role::Unspecified), "role"),
        (
            AddMemberRequest {
                role: 42,
                ..add(&email(), Role::Member)
            },
            "role",
        ),
        (
            AddMemberRequest {
                display_name: "x".repeat(201),
                ..add(&email(), Role::Member)
            },
            "display_name",
        ),
    ] {
        let err = client()
            .add_member(authed(req, &t.owner_token))
            .await
            .unwrap_err();
        assert_bad_field(&err, field);
    }

    // Idempotent add.
    let req = AddMemberRequest {
        request_id: Uuid::new_v4().to_string(),
        ..add(&email(), Role::Member)
    };
    let first = client()
        .add_member(authed(req.clone(), &t.owner_token))
        .await
        .unwrap()
        .into_inner();
    let again = client()
        .add_member(authed(req, &t.owner_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
}

#[tokio::test]
async fn the_last_owner_stays() {
    let t = app().new_tenant().await;
    let owner = t.owner.to_string();
    let demote = |user_id: String| UpdateMemberRequest {
        member: Some(Member {
            user_id,
            role: Role::Admin as i32,
            ..Default::default()
        }),
        update_mask: role_mask(),
    };
    let err = client()
        .update_member(authed(demote(owner.clone()), &t.owner_token))
        .await
        .unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "LAST_OWNER");
    let err = client()
        .remove_member(authed(
            RemoveMemberRequest {
                user_id: owner.clone(),
                etag: String::new(),
            },
            &t.owner_token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "LAST_OWNER");
    // Admins cannot touch owners at all.
    let err = client()
        .update_member(authed(demote(owner.clone()), &t.token("admin")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let second = client()
        .add_member(authed(add(&email(), Role::Owner), &t.owner_token))
        .await
        .unwrap()
        .into_inner();
    // Two owners demoting each other at once: exactly one succeeds.
    let (mut c1, mut c2) = (client(), client());
    let (a, b) = tokio::join!(
        c1.update_member(authed(demote(owner.clone()), &t.owner_token)),
        c2.update_member(authed(demote(second.user_id.clone()), &t.owner_token)),
    );
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
}

#[tokio::test]
async fn users_are_global_but_seen_only_through_membership_ids() {
    let a = app().new_tenant().await;
    let b = app().new_tenant().await;
    let e = email();
    let in_a = client()
        .add_member(authed(add(&e, Role::Member), &a.owner_token))
        .await
        .unwrap()
        .into_inner();
    let in_b = client()
        .add_member(authed(add(&e, Role::Viewer), &b.owner_token))
        .await
        .unwrap()
        .into_inner();
    // One user, two memberships, two unrelated ids: B learns nothing of A's
    // member (its id, or when the user's account was made) from its own.
    assert_ne!(in_a.user_id, in_b.user_id, "a member id per tenant");
    assert_eq!(in_a.email, in_b.email);
    assert_eq!(in_b.role, Role::Viewer as i32);
    let mut db = app().admin_db().await;
    let global: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM identity.memberships WHERE member_id = ANY($1::uuid[])",
    )
    .bind(vec![
        in_a.user_id.parse::<uuid::Uuid>().unwrap(),
        in_b.user_id.parse::<uuid::Uuid>().unwrap(),
    ])
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(global.len(), 2);
    assert_eq!(global[0], global[1], "one global user behind both");
    for member in [&in_a.user_id, &in_b.user_id] {
        assert_ne!(
            member,
            &global[0].to_string(),
            "the global id never leaves identity"
        );
    }

    // B cannot read, change or remove A's members by id.
    let a_owner = a.owner.to_string();
    let err = client()
        .get_member(authed(
            GetMemberRequest {
                user_id: a_owner.clone(),
            },
            &b.owner_token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "MEMBER_NOT_FOUND");
    let err = client()
        .update_member(authed(
            UpdateMemberRequest {
                member: Some(Member {
                    user_id: a_owner.clone(),
                    role: Role::Viewer as i32,
                    ..Default::default()
                }),
                update_mask: role_mask(),
            },
            &b.owner_token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "MEMBER_NOT_FOUND");
    let err = client()
        .remove_member(authed(
            RemoveMemberRequest {
                user_id: a_owner.clone(),
                etag: String::new(),
            },
            &b.owner_token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "MEMBER_NOT_FOUND");
    let b_list = client()
        .list_members(authed(ListMembersRequest::default(), &b.owner_token))
        .await
        .unwrap()
        .into_inner();
    assert!(
        b_list
            .members
            .iter()
            .all(|m| m.tenant_id == b.id.to_string() && m.user_id != a_owner)
    );

    let still = client()
        .get_member(authed(
            GetMemberRequest { user_id: a_owner },
            &a.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.role, Role::Owner as i32);
    // Audit trails are per tenant too.
    let events = AuditServiceClient::new(app().channel())
        .list_audit_events(authed(ListAuditEventsRequest::default(), &b.owner_token))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(events.iter().all(|e| e.tenant_id == b.id.to_string()));
}
