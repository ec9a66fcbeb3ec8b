//! CompanyService: standard methods, batch upsert by external_id, unique
//! among live rows, etags, roles, isolation; and the crm audit trail.

use mosaic_proto::common::ListAuditEventsRequest;
use mosaic_proto::crm::{
    BatchUpsertCompaniesRequest, Company, CreateCompanyRequest, DeleteCompanyRequest,
    GetCompanyRequest, ListCompaniesRequest, UndeleteCompanyRequest, UpdateCompanyRequest,
};
use prost_types::FieldMask;
use tonic::Code;
use uuid::Uuid;

use crate::crm_support::{CrmTenant, audit, companies};
use crate::harness::{assert_bad_field, assert_error, bad_fields};

fn company(name: &str, domain: &str, external_id: &str) -> Company {
    Company {
        display_name: name.into(),
        domain: domain.into(),
        external_id: external_id.into(),
        ..Default::default()
    }
}

fn create(c: Company) -> CreateCompanyRequest {
    CreateCompanyRequest {
        company: Some(c),
        request_id: String::new(),
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn domain() -> String {
    format!("d{}.example.com", Uuid::new_v4().simple())
}

#[tokio::test]
async fn create_get_list_update_delete_undelete() {
    let t = CrmTenant::new().await;
    let d = domain();
    let c = companies()
        .create_company(t.as_role(
            "member",
            create(Company {
                industry: " Software ".into(),
                employee_count: 40,
                ..company(" Acme ", &d.to_uppercase(), "ext-1")
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.display_name, "Acme");
    assert_eq!(c.domain, d, "domain is lowercased");
    assert_eq!(c.industry, "Software");
    assert_eq!(c.employee_count, 40);
    assert!(Uuid::parse_str(&c.company_id).unwrap().get_version_num() == 7);
    assert!(c.create_time.is_some() && c.delete_time.is_none() && !c.etag.is_empty());

    let got = companies()
        .get_company(t.as_role(
            "viewer",
            GetCompanyRequest {
                company_id: c.company_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, c);

    let listed = companies()
        .list_companies(t.as_role("viewer", ListCompaniesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.companies, vec![c.clone()]);
    assert!(listed.next_page_token.is_empty());

    // Only the masked field changes; the etag moves.
    let updated = companies()
        .update_company(t.as_role(
            "member",
            UpdateCompanyRequest {
                company: Some(Company {
                    company_id: c.company_id.clone(),
                    etag: c.etag.clone(),
                    ..company("Acme Corp", "", "")
                }),
                update_mask: mask(&["display_name"]),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Acme Corp");
    assert_eq!(updated.domain, d);
    assert_eq!(updated.external_id, "ext-1");
    assert_ne!(updated.etag, c.etag);

    // A stale etag is ABORTED and writes nothing.
    let stale = companies()
        .update_company(t.req(UpdateCompanyRequest {
            company: Some(Company {
                company_id: c.company_id.clone(),
                etag: c.etag.clone(),
                ..company("Lost Update", "", "")
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await
        .unwrap_err();
    assert_error(&stale, Code::Aborted, "ETAG_MISMATCH");

    // Clearing an optional field through the mask.
    let cleared = companies()
        .update_company(t.req(UpdateCompanyRequest {
            company: Some(Company {
                company_id: c.company_id.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["domain"]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.domain, "");

    // Members may not delete; admins may, and Get still answers.
    let denied = companies()
        .delete_company(t.as_role(
            "member",
            DeleteCompanyRequest {
                company_id: c.company_id.clone(),
                etag: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let deleted = companies()
        .delete_company(t.req(DeleteCompanyRequest {
            company_id: c.company_id.clone(),
            etag: cleared.etag.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some() && deleted.expire_time.is_some());
    let again = companies()
        .delete_company(t.req(DeleteCompanyRequest {
            company_id: c.company_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.etag, deleted.etag,
        "repeating a delete changes nothing"
    );
    let hidden = companies()
        .list_companies(t.req(ListCompaniesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(hidden.companies.is_empty());
    let shown = companies()
        .list_companies(t.req(ListCompaniesRequest {
            show_deleted: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.companies.len(), 1);
    let upd_deleted = companies()
        .update_company(t.req(UpdateCompanyRequest {
            company: Some(Company {
                company_id: c.company_id.clone(),
                ..company("X", "", "")
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await
        .unwrap_err();
    assert_error(&upd_deleted, Code::FailedPrecondition, "COMPANY_DELETED");

    let restored = companies()
        .undelete_company(t.req(UndeleteCompanyRequest {
            company_id: c.company_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(restored.delete_time.is_none() && restored.expire_time.is_none());

    // Every mutation left an audit event.
    let events = audit()
        .list_audit_events(t.req(ListAuditEventsRequest {
            resource_type: "company".into(),
            resource_id: c.company_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "company.undelete",
            "company.delete",
            "company.update",
            "company.update",
            "company.create"
        ]
    );
}

#[tokio::test]
async fn unique_among_live_rows_and_create_after_delete() {
    let t = CrmTenant::new().await;
    let d = domain();
    let first = companies()
        .create_company(t.req(create(company("A", &d, "ext-a"))))
        .await
        .unwrap()
        .into_inner();
    let taken = companies()
        .create_company(t.req(create(company("B", &d, ""))))
        .await
        .unwrap_err();
    assert_error(&taken, Code::AlreadyExists, "COMPANY_DOMAIN_TAKEN");
    assert_eq!(bad_fields(&taken), ["company.domain"]);
    let taken = companies()
        .create_company(t.req(create(company("B", "", "ext-a"))))
        .await
        .unwrap_err();
    assert_error(&taken, Code::AlreadyExists, "COMPANY_EXTERNAL_ID_TAKEN");
    assert_eq!(bad_fields(&taken), ["company.external_id"]);

    // Another tenant may hold the same values: keys are per tenant.
    let other = CrmTenant::new().await;
    companies()
        .create_company(other.req(create(company("A", &d, "ext-a"))))
        .await
        .unwrap();

    // After a soft delete the values are free again ...
    companies()
        .delete_company(t.req(DeleteCompanyRequest {
            company_id: first.company_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let second = companies()
        .create_company(t.req(create(company("A2", &d, "ext-a"))))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.company_id, first.company_id);
    // ... and undeleting the first would collide: ALREADY_EXISTS, still deleted.
    let clash = companies()
        .undelete_company(t.req(UndeleteCompanyRequest {
            company_id: first.company_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists);
    let still = companies()
        .get_company(t.req(GetCompanyRequest {
            company_id: first.company_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(still.delete_time.is_some());
}

#[tokio::test]
async fn create_is_idempotent_by_request_id() {
    let t = CrmTenant::new().await;
    let rid = Uuid::now_v7().to_string();
    let req = CreateCompanyRequest {
        company: Some(company("Once", "", "")),
        request_id: rid.clone(),
    };
    let a = companies()
        .create_company(t.req(req.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = companies()
        .create_company(t.req(req))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    assert_eq!(t.count("companies").await, 1);
    let other = companies()
        .create_company(t.req(CreateCompanyRequest {
            company: Some(company("Twice", "", "")),
            request_id: rid,
        }))
        .await
        .unwrap_err();
    assert_bad_field(&other, "request_id");
}

#[tokio::test]
async fn bad_input_names_every_field_and_writes_nothing() {
    let t = CrmTenant::new().await;
    let bad = companies()
        .create_company(t.req(create(Company {
            display_name: "  ".into(),
            domain: "not a domain".into(),
            external_id: "x".repeat(129),
            industry: "i".repeat(101),
            employee_count: -1,
            ..Default::default()
        })))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let mut fields = bad_fields(&bad);
    fields.sort();
    assert_eq!(
        fields,
        [
            "company.display_name",
            "company.domain",
            "company.employee_count",
            "company.external_id",
            "company.industry"
        ]
    );
    let bad = companies()
        .create_company(t.req(CreateCompanyRequest {
            company: Some(company("A", "", "")),
            request_id: "nope".into(),
        }))
        .await
        .unwrap_err();
    assert_bad_field(&bad, "request_id");
    let bad = companies()
        .get_company(t.req(GetCompanyRequest {
            company_id: "42".into(),
        }))
        .await
        .unwrap_err();
    assert_bad_field(&bad, "company_id");
    let bad = companies()
        .list_companies(t.req(ListCompaniesRequest {
            page_size: 1001,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&bad, "page_size");
    let bad = companies()
        .list_companies(t.req(ListCompaniesRequest {
            page_token: "garbage".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&bad, "page_token");
    let bad = companies()
        .update_company(t.req(UpdateCompanyRequest {
            company: Some(Company {
                company_id: Uuid::now_v7().to_string(),
                ..Default::default()
            }),
            update_mask: mask(&["company_id"]),
        }))
        .await
        .unwrap_err();
    assert_bad_field(&bad, "update_mask");
    let bad = companies()
        .update_company(t.req(UpdateCompanyRequest {
            company: Some(Company {
                company_id: Uuid::now_v7().to_string(),
                etag: "7".into(),
                ..Default::default()
            }),
            update_mask: mask(&["industry"]),
        }))
        .await
        .unwrap_err();
    assert_bad_field(&bad, "company.etag");
    let bad = companies()
        .batch_upsert_companies(t.req(BatchUpsertCompaniesRequest { companies: vec![] }))
        .await
        .unwrap_err();
    assert_bad_field(&bad, "companies");
    let too_many = (0..1001)
        .map(|i| company("C", "", &format!("e{i}")))
        .collect();
    let bad = companies()
        .batch_upsert_companies(t.req(BatchUpsertCompaniesRequest {
            companies: too_many,
        }))
        .await
        .unwrap_err();
    assert_bad_field(&bad, "companies");
    let d = domain();
    let bad = companies()
        .batch_upsert_companies(t.req(BatchUpsertCompaniesRequest {
            companies: vec![
                company("A", &d, "k1"),
                company("B", "", ""),
                company("C", "", "k1"),
                company("D", &d, "k4"),
                company("", "", "k5"),
            ],
        }))
        .await
        .unwrap_err();
    let mut fields = bad_fields(&bad);
    fields.sort();
    assert_eq!(
        fields,
        [
            "companies[1].external_id",
            "companies[2].external_id",
            "companies[3].domain",
            "companies[4].display_name"
        ]
    );
    assert_eq!(t.count("companies").await, 0);
    assert_eq!(t.count("audit_events").await, 0);
}

#[tokio::test]
async fn batch_upsert_creates_then_updates_by_external_id() {
    let t = CrmTenant::new().await;
    let batch: Vec<Company> = (0..300)
        .map(|i| {
            company(
                &format!("Co {i}"),
                &format!("co{i}-{}.io", t.id.uuid().simple()),
                &format!("sf-{i}"),
            )
        })
        .collect();
    let first = companies()
        .batch_upsert_companies(t.as_role(
            "member",
            BatchUpsertCompaniesRequest {
                companies: batch.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.created_count, first.updated_count), (300, 0));
    let keys: Vec<&str> = first
        .companies
        .iter()
        .map(|c| c.external_id.as_str())
        .collect();
    let expected: Vec<String> = (0..300).map(|i| format!("sf-{i}")).collect();
    assert_eq!(keys, expected, "request order");

    // Half again (renamed) plus 100 new: 150 updated, 100 created, same ids.
    let mut second: Vec<Company> = batch[..150]
        .iter()
        .map(|c| Company {
            display_name: format!("{} v2", c.display_name),
            ..c.clone()
        })
        .collect();
    second.extend((300..400).map(|i| company(&format!("Co {i}"), "", &format!("sf-{i}"))));
    let reply = companies()
        .batch_upsert_companies(t.req(BatchUpsertCompaniesRequest { companies: second }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.created_count, reply.updated_count), (100, 150));
    assert_eq!(reply.companies[0].company_id, first.companies[0].company_id);
    assert_eq!(reply.companies[0].display_name, "Co 0 v2");
    assert_ne!(reply.companies[0].etag, first.companies[0].etag);
    assert_eq!(t.count("companies").await, 400);
    assert_eq!(
        t.audit_counts().await,
        [
            ("company.create".into(), 400),
            ("company.update".into(), 150)
        ],
        "one audit event per company"
    );

    // A domain held by a company outside the batch's keys is named.
    let held = first.companies[5].domain.clone();
    let clash = companies()
        .batch_upsert_companies(t.req(BatchUpsertCompaniesRequest {
            companies: vec![
                company("New", "", "sf-new"),
                company("Thief", &held, "sf-thief"),
            ],
        }))
        .await
        .unwrap_err();
    assert_error(&clash, Code::AlreadyExists, "COMPANY_DOMAIN_TAKEN");
    assert_eq!(bad_fields(&clash), ["companies[1].domain"]);
    assert_eq!(t.count("companies").await, 400, "all or nothing");
    assert_eq!(t.count("audit_events").await, 550);
}

#[tokio::test]
async fn another_tenant_is_not_found_and_unchanged() {
    let a = CrmTenant::new().await;
    let b = CrmTenant::new().await;
    let c = companies()
        .create_company(a.req(create(company("Mine", &domain(), "shared-key"))))
        .await
        .unwrap()
        .into_inner();
    let id = c.company_id.clone();
    let e = companies()
        .get_company(b.req(GetCompanyRequest {
            company_id: id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    let e = companies()
        .update_company(b.req(UpdateCompanyRequest {
            company: Some(Company {
                company_id: id.clone(),
                ..company("Theirs", "", "")
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    let e = companies()
        .delete_company(b.req(DeleteCompanyRequest {
            company_id: id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    let e = companies()
        .undelete_company(b.req(UndeleteCompanyRequest {
            company_id: id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    // B's upsert with A's external id creates B's own company.
    let mine = companies()
        .batch_upsert_companies(b.req(BatchUpsertCompaniesRequest {
            companies: vec![company("B", "", &c.external_id)],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.created_count, 1);
    let listed = companies()
        .list_companies(b.req(ListCompaniesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.companies.len(), 1);
    assert_ne!(listed.companies[0].company_id, id);

    let after = companies()
        .get_company(a.req(GetCompanyRequest { company_id: id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, c, "A's company is unchanged");
    let audit_b = audit()
        .list_audit_events(b.req(ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        audit_b
            .events
            .iter()
            .all(|e| e.tenant_id == b.id.to_string())
    );
}

#[tokio::test]
async fn viewers_read_members_write() {
    let t = CrmTenant::new().await;
    let e = companies()
        .create_company(t.as_role("viewer", create(company("V", "", ""))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = companies()
        .batch_upsert_companies(t.as_role(
            "viewer",
            BatchUpsertCompaniesRequest {
                companies: vec![company("V", "", "k")],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = audit()
        .list_audit_events(t.as_role("member", ListAuditEventsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let c = t.company("M").await;
    let e = companies()
        .undelete_company(t.as_role(
            "member",
            UndeleteCompanyRequest {
                company_id: c.company_id,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn pages_visit_every_company_once() {
    let t = CrmTenant::new().await;
    let batch: Vec<Company> = (0..55)
        .map(|i| company("P", "", &format!("p{i}")))
        .collect();
    companies()
        .batch_upsert_companies(t.req(BatchUpsertCompaniesRequest { companies: batch }))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = companies()
            .list_companies(t.req(ListCompaniesRequest {
                page_size: 10,
                page_token: token,
                show_deleted: false,
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.companies.into_iter().map(|c| c.company_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 55);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "ascending, no repeats");
}
