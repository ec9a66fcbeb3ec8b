//! ContactService standard methods: email unique among live rows, tags and
//! metadata bounds, filtered keyset listing (also under concurrent inserts),
//! deal references cleared on delete, isolation.

use std::collections::BTreeSet;

use mosaic_proto::crm::{
    Contact, CreateContactRequest, CreateDealRequest, Deal, DeleteContactRequest,
    GetContactRequest, GetDealRequest, LinkDealContactRequest, ListContactsRequest,
    UndeleteContactRequest, UpdateContactRequest,
};
use prost_types::{FieldMask, Struct, Value, value::Kind};
use tonic::Code;
use uuid::Uuid;

use crate::crm_support::{CrmTenant, contacts, deals, email};
use crate::harness::{assert_bad_field, assert_error, bad_fields};

fn create(c: Contact) -> CreateContactRequest {
    CreateContactRequest {
        contact: Some(c),
        request_id: String::new(),
    }
}

fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn object(pairs: &[(&str, Value)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn list(t: &CrmTenant, req: ListContactsRequest) -> Vec<String> {
    let mut emails = Vec::new();
    let mut req = req;
    loop {
        let page = contacts()
            .list_contacts(t.req(req.clone()))
            .await
            .unwrap()
            .into_inner();
        emails.extend(page.contacts.into_iter().map(|c| c.email));
        if page.next_page_token.is_empty() {
            return emails;
        }
        req.page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn create_get_update_delete_undelete() {
    let t = CrmTenant::new().await;
    let co = t.company("Acme").await;
    let e = email("Ada");
    let c = contacts()
        .create_contact(t.as_role(
            "member",
            create(Contact {
                email: format!("  {}  ", e.to_uppercase()),
                full_name: "Ada Lovelace".into(),
                title: "Analyst".into(),
                phone: "+44 (20) 7946-0000".into(),
                company_id: co.company_id.clone(),
                tags: vec!["vip".into(), " vip ".into(), "math".into()],
                metadata: Some(object(&[("tier", text("gold"))])),
                ..Default::default()
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.email, e.to_lowercase());
    assert_eq!(c.tags, ["vip", "math"], "trimmed, deduplicated, in order");
    assert_eq!(c.company_id, co.company_id);
    assert_eq!(c.metadata, Some(object(&[("tier", text("gold"))])));
    let got = contacts()
        .get_contact(t.as_role(
            "viewer",
            GetContactRequest {
                contact_id: c.contact_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, c);

    let updated = contacts()
        .update_contact(t.req(UpdateContactRequest {
            contact: Some(Contact {
                contact_id: c.contact_id.clone(),
                etag: c.etag.clone(),
                tags: vec!["alumni".into()],
                company_id: String::new(),
                ..Default::default()
            }),
            update_mask: mask(&["tags", "company_id"]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.tags, ["alumni"]);
    assert_eq!(updated.company_id, "");
    assert_eq!(updated.full_name, "Ada Lovelace");
    let stale = contacts()
        .update_contact(t.req(UpdateContactRequest {
            contact: Some(Contact {
                contact_id: c.contact_id.clone(),
                etag: c.etag.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["title"]),
        }))
        .await
        .unwrap_err();
    assert_error(&stale, Code::Aborted, "ETAG_MISMATCH");

    let deleted = contacts()
        .delete_contact(t.req(DeleteContactRequest {
            contact_id: c.contact_id.clone(),
            etag: updated.etag.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some());
    let got = contacts()
        .get_contact(t.req(GetContactRequest {
            contact_id: c.contact_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        got.delete_time.is_some(),
        "Get still returns a deleted contact"
    );
    assert!(list(&t, ListContactsRequest::default()).await.is_empty());
    assert_eq!(
        list(
            &t,
            ListContactsRequest {
                show_deleted: true,
                ..Default::default()
            }
        )
        .await
        .len(),
        1
    );
    let restored = contacts()
        .undelete_contact(t.req(UndeleteContactRequest {
            contact_id: c.contact_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(restored.delete_time.is_none());
}

#[tokio::test]
async fn email_is_unique_among_live_contacts() {
    let t = CrmTenant::new().await;
    let e = email("dup");
    let first = t.contact(&e).await;
    let taken = contacts()
        .create_contact(t.req(create(Contact {
            email: e.to_uppercase(),
            ..Default::default()
        })))
        .await
        .unwrap_err();
    assert_error(&taken, Code::AlreadyExists, "CONTACT_EMAIL_TAKEN");
    assert_eq!(bad_fields(&taken), ["contact.email"]);
    // Changing another contact's email to it is refused the same way.
    let other = t.contact(&email("other")).await;
    let taken = contacts()
        .update_contact(t.req(UpdateContactRequest {
            contact: Some(Contact {
                contact_id: other.contact_id.clone(),
                email: e.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["email"]),
        }))
        .await
        .unwrap_err();
    assert_error(&taken, Code::AlreadyExists, "CONTACT_EMAIL_TAKEN");
    assert_eq!(bad_fields(&taken), ["contact.email"]);

    // Create after soft delete works; undeleting the first then collides.
    contacts()
        .delete_contact(t.req(DeleteContactRequest {
            contact_id: first.contact_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let second = t.contact(&e).await;
    assert_ne!(second.contact_id, first.contact_id);
    let clash = contacts()
        .undelete_contact(t.req(UndeleteContactRequest {
            contact_id: first.contact_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&clash, Code::AlreadyExists, "CONTACT_EMAIL_TAKEN");

    // The same email in another tenant is no conflict.
    CrmTenant::new().await.contact(&e).await;
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let t = CrmTenant::new().await;
    let cases: Vec<(Contact, &str)> = vec![
        (Contact::default(), "contact.email"),
        (
            Contact {
                email: "not-an-email".into(),
                ..Default::default()
            },
            "contact.email",
        ),
        (
            Contact {
                email: email("x"),
                full_name: "n".repeat(201),
                ..Default::default()
            },
            "contact.full_name",
        ),
        (
            Contact {
                email: email("x"),
                title: "bad\u{0}".into(),
                ..Default::default()
            },
            "contact.title",
        ),
        (
            Contact {
                email: email("x"),
                phone: "call me".into(),
                ..Default::default()
            },
            "contact.phone",
        ),
        (
            Contact {
                email: email("x"),
                company_id: "acme".into(),
                ..Default::default()
            },
            "contact.company_id",
        ),
        (
            Contact {
                email: email("x"),
                tags: vec!["t".into(); 33],
                ..Default::default()
            },
            "contact.tags",
        ),
        (
            Contact {
                email: email("x"),
                tags: vec!["ok".into(), "x".repeat(65)],
                ..Default::default()
            },
            "contact.tags[1]",
        ),
        (
            Contact {
                email: email("x"),
                tags: vec!["ok".into(), "  ".into()],
                ..Default::default()
            },
            "contact.tags[1]",
        ),
        (
            Contact {
                email: email("x"),
                metadata: Some(object(&[("blob", text(&"m".repeat(9000)))])),
                ..Default::default()
            },
            "contact.metadata",
        ),
        (
            Contact {
                email: email("x"),
                metadata: Some(object(&[(
                    "n",
                    Value {
                        kind: Some(Kind::NumberValue(f64::NAN)),
                    },
                )])),
                ..Default::default()
            },
            "contact.metadata",
        ),
    ];
    for (contact, field) in cases {
        let e = contacts()
            .create_contact(t.req(create(contact)))
            .await
            .unwrap_err();
        assert_bad_field(&e, field);
    }
    // An unknown (or another tenant's) company is NOT_FOUND.
    let foreign = CrmTenant::new().await.company("Theirs").await;
    for company_id in [Uuid::now_v7().to_string(), foreign.company_id] {
        let e = contacts()
            .create_contact(t.req(create(Contact {
                email: email("x"),
                company_id,
                ..Default::default()
            })))
            .await
            .unwrap_err();
        assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    }
    let bad_lists = [
        (
            ListContactsRequest {
                metadata_key: "tier".into(),
                ..Default::default()
            },
            "metadata_value",
        ),
        (
            ListContactsRequest {
                metadata_value: Some(text("gold")),
                ..Default::default()
            },
            "metadata_key",
        ),
        (
            ListContactsRequest {
                query: "&|!".into(),
                ..Default::default()
            },
            "query",
        ),
        (
            ListContactsRequest {
                company_id: "x".into(),
                ..Default::default()
            },
            "company_id",
        ),
        (
            ListContactsRequest {
                tag: "t".repeat(65),
                ..Default::default()
            },
            "tag",
        ),
        (
            ListContactsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
    ];
    for (req, field) in bad_lists {
        let e = contacts().list_contacts(t.req(req)).await.unwrap_err();
        assert_bad_field(&e, field);
    }
    assert_eq!(t.count("contacts").await, 0);
    assert_eq!(t.count("audit_events").await, 0);
}

#[tokio::test]
async fn list_filters_combine() {
    let t = CrmTenant::new().await;
    let acme = t.company("Acme").await;
    let make = |e: &str, name: &str, company: &str, tags: &[&str], tier: &str| Contact {
        email: e.into(),
        full_name: name.into(),
        company_id: company.into(),
        tags: tags.iter().map(|s| (*s).to_owned()).collect(),
        metadata: Some(object(&[
            ("tier", text(tier)),
            (
                "score",
                Value {
                    kind: Some(Kind::NumberValue(3.0)),
                },
            ),
        ])),
        ..Default::default()
    };
    let rows = [
        make(
            "ada.lovelace@analytical.io",
            "Ada Lovelace",
            &acme.company_id,
            &["vip", "math"],
            "gold",
        ),
        make(
            "grace@navy.mil",
            "Grace Hopper",
            &acme.company_id,
            &["vip"],
            "silver",
        ),
        make("alan@bletchley.uk", "Alan Turing", "", &["math"], "gold"),
        make("linus@kernel.org", "Linus", "", &[], "bronze"),
    ];
    for c in rows {
        contacts().create_contact(t.req(create(c))).await.unwrap();
    }
    let set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>();
    let company = |id: &str| ListContactsRequest {
        company_id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        set(list(&t, company(&acme.company_id)).await),
        set(vec![
            "ada.lovelace@analytical.io".into(),
            "grace@navy.mil".into()
        ])
    );
    let tag = |t: &str| ListContactsRequest {
        tag: t.into(),
        ..Default::default()
    };
    assert_eq!(
        set(list(&t, tag("math")).await),
        set(vec![
            "ada.lovelace@analytical.io".into(),
            "alan@bletchley.uk".into()
        ])
    );
    let meta = ListContactsRequest {
        metadata_key: "tier".into(),
        metadata_value: Some(text("gold")),
        ..Default::default()
    };
    assert_eq!(
        set(list(&t, meta.clone()).await),
        set(vec![
            "ada.lovelace@analytical.io".into(),
            "alan@bletchley.uk".into()
        ])
    );
    let number = ListContactsRequest {
        metadata_key: "score".into(),
        metadata_value: Some(Value {
            kind: Some(Kind::NumberValue(3.0)),
        }),
        ..Default::default()
    };
    assert_eq!(list(&t, number).await.len(), 4);
    let query = |q: &str| ListContactsRequest {
        query: q.into(),
        ..Default::default()
    };
    assert_eq!(
        list(&t, query("ada lov")).await,
        ["ada.lovelace@analytical.io"]
    );
    assert_eq!(list(&t, query("HOPPER")).await, ["grace@navy.mil"]);
    assert_eq!(
        list(&t, query("kernel.org")).await,
        ["linus@kernel.org"],
        "email domain words"
    );
    assert_eq!(
        list(&t, query("alan@bletchley.uk")).await,
        ["alan@bletchley.uk"]
    );
    assert!(list(&t, query("nobody")).await.is_empty());
    // All filters at once.
    let all = ListContactsRequest {
        company_id: acme.company_id.clone(),
        tag: "vip".into(),
        query: "ada".into(),
        ..meta
    };
    assert_eq!(list(&t, all).await, ["ada.lovelace@analytical.io"]);
    // Another tenant's data never matches.
    assert!(list(&CrmTenant::new().await, query("ada")).await.is_empty());

    // A page token only works with the filters that made it.
    let page = contacts()
        .list_contacts(t.req(ListContactsRequest {
            page_size: 1,
            tag: "math".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    let e = contacts()
        .list_contacts(t.req(ListContactsRequest {
            page_size: 1,
            tag: "vip".into(),
            page_token: page.next_page_token,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&e, "page_token");
}

/// Pages through a tenant's contacts while another task keeps inserting:
/// every contact present at the start is seen exactly once.
#[tokio::test]
async fn paging_is_stable_under_concurrent_inserts() {
    let t = CrmTenant::new().await;
    let mut before = BTreeSet::new();
    for i in 0..120 {
        let e = format!("before-{i}-{}@example.com", t.id.uuid().simple());
        t.contact(&e).await;
        before.insert(e);
    }
    let writer = tokio::spawn(async move {
        for i in 0..150 {
            t.contact(&format!("during-{i}-{}@example.com", t.id.uuid().simple()))
                .await;
        }
    });
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = contacts()
            .list_contacts(t.req(ListContactsRequest {
                page_size: 7,
                page_token: token,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.contacts.into_iter().map(|c| c.email));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    writer.await.unwrap();
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no contact seen twice");
    assert!(
        before.is_subset(&unique),
        "every contact present at the start was seen"
    );
}

#[tokio::test]
async fn deleting_a_contact_clears_deal_references_not_deals() {
    let t = CrmTenant::new().await;
    let co = t.company("Acme").await;
    let c = t.contact(&email("buyer")).await;
    let other = t.contact(&email("other")).await;
    let deal = deals()
        .create_deal(t.req(CreateDealRequest {
            deal: Some(Deal {
                company_id: co.company_id.clone(),
                primary_contact_id: c.contact_id.clone(),
                display_name: "Big".into(),
                currency_code: "EUR".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    for contact in [&c, &other] {
        deals()
            .link_deal_contact(t.req(LinkDealContactRequest {
                deal_id: deal.deal_id.clone(),
                contact_id: contact.contact_id.clone(),
            }))
            .await
            .unwrap();
    }
    let before = deals()
        .get_deal(t.req(GetDealRequest {
            deal_id: deal.deal_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    contacts()
        .delete_contact(t.req(DeleteContactRequest {
            contact_id: c.contact_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let after = deals()
        .get_deal(t.req(GetDealRequest {
            deal_id: deal.deal_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.primary_contact_id, "");
    assert_eq!(after.contact_ids, std::slice::from_ref(&other.contact_id));
    assert!(after.delete_time.is_none(), "the deal stays");
    assert_ne!(after.etag, before.etag);
    assert_eq!(
        t.audited("deal.update").await,
        std::slice::from_ref(&deal.deal_id),
        "the deal's change is audited"
    );
}

#[tokio::test]
async fn another_tenant_is_not_found_and_unchanged() {
    let a = CrmTenant::new().await;
    let b = CrmTenant::new().await;
    let c = a.contact(&email("a")).await;
    let id = c.contact_id.clone();
    let e = contacts()
        .get_contact(b.req(GetContactRequest {
            contact_id: id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "CONTACT_NOT_FOUND");
    let e = contacts()
        .update_contact(b.req(UpdateContactRequest {
            contact: Some(Contact {
                contact_id: id.clone(),
                full_name: "Mallory".into(),
                ..Default::default()
            }),
            update_mask: mask(&["full_name"]),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "CONTACT_NOT_FOUND");
    let e = contacts()
        .delete_contact(b.req(DeleteContactRequest {
            contact_id: id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "CONTACT_NOT_FOUND");
    let e = contacts()
        .undelete_contact(b.req(UndeleteContactRequest {
            contact_id: id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "CONTACT_NOT_FOUND");
    assert!(
        list(
            &b,
            ListContactsRequest {
                show_deleted: true,
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );
    // A's company id filters nothing in B, and cannot be assigned in B.
    let co = a.company("A's").await;
    let mine = b.contact(&email("b")).await;
    assert!(
        list(
            &b,
            ListContactsRequest {
                company_id: co.company_id.clone(),
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );
    let e = contacts()
        .update_contact(b.req(UpdateContactRequest {
            contact: Some(Contact {
                contact_id: mine.contact_id.clone(),
                company_id: co.company_id.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["company_id"]),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    let e = contacts()
        .import_contacts(b.req(tokio_stream::iter(vec![
            mosaic_proto::crm::ImportContactsRequest {
                contacts: vec![Contact {
                    email: email("imp"),
                    company_id: co.company_id.clone(),
                    ..Default::default()
                }],
            },
        ])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((e.created_count, e.failed_count), (0, 1));
    assert_eq!(e.failures[0].reason, "COMPANY_NOT_FOUND");
    let after = contacts()
        .get_contact(a.req(GetContactRequest { contact_id: id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, c);
}

/// 600 contacts of nearly the largest metadata (7.9 KB of the 8 KiB allowed)
/// weigh more than the 4 MiB reply limit: a page of 1000 (the maximum) comes
/// back short, with a token, and the pages together hold every contact once.
#[tokio::test]
async fn pages_of_large_contacts_stop_short_of_the_reply_limit() {
    use mosaic_proto::crm::ImportContactsRequest;

    let t = CrmTenant::new().await;
    let blob = "x".repeat(7_900);
    let rows: Vec<Contact> = (0..600)
        .map(|i| Contact {
            email: format!("big{i}@limit.example.com"),
            metadata: Some(Struct {
                fields: [("blob".to_owned(), text(&blob))].into(),
            }),
            ..Default::default()
        })
        .collect();
    let messages: Vec<ImportContactsRequest> = rows
        .chunks(100)
        .map(|chunk| ImportContactsRequest {
            contacts: chunk.to_vec(),
        })
        .collect();
    let reply = contacts()
        .import_contacts(t.req(tokio_stream::iter(messages)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.created_count, 600, "{reply:?}");

    let mut seen = BTreeSet::new();
    let mut sizes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = contacts()
            .list_contacts(t.req(ListContactsRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            }))
            .await
            .expect("a page under the reply limit")
            .into_inner();
        sizes.push(page.contacts.len());
        for contact in page.contacts {
            assert!(seen.insert(contact.contact_id), "a contact listed twice");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 600);
    assert!(sizes.len() >= 2, "one page of 4.7 MB: {sizes:?}");
    assert!(
        sizes[0] > 400,
        "the first page is as full as the limit allows: {sizes:?}"
    );
}

/// A filter that matches few contacts of a large tenant reads a bounded scan
/// window per page: past 10,000 contacts a page ends, short or empty, with a
/// token that resumes where the scan stopped, and the pages together hold
/// exactly the matching contacts, each once, in id order.
#[tokio::test]
async fn rare_filters_read_a_bounded_window_per_page() {
    let t = CrmTenant::new().await;
    let other = CrmTenant::new().await;
    // Ids in row order (0000...0001, ...), so the window's edge is known:
    // rows 5, 10,040 and 10,045 are tagged; the first window ends at 10,000.
    let mut admin = crate::harness::app().admin_db().await;
    for tenant in [t.id, other.id] {
        sqlx::query(
            "INSERT INTO crm.contacts (tenant_id, contact_id, email, tags) \
             SELECT $1, lpad(to_hex(i), 32, '0')::uuid, 'w' || i || '@window.example', \
                    CASE WHEN i IN (5, 10040, 10045) THEN ARRAY['rare'] ELSE ARRAY['common'] END \
             FROM generate_series(1, 10050) AS i",
        )
        .bind(tenant.uuid())
        .execute(&mut admin)
        .await
        .unwrap();
    }
    let id = |i: u32| Uuid::from_u128(u128::from(i)).to_string();
    let list = |page_token: String| async move {
        contacts()
            .list_contacts(t.req(ListContactsRequest {
                page_size: 50,
                page_token,
                tag: "rare".into(),
                ..Default::default()
            }))
            .await
    };
    let first = list(String::new()).await.unwrap().into_inner();
    let ids = |page: &mosaic_proto::crm::ListContactsResponse| {
        page.contacts
            .iter()
            .map(|c| c.contact_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), [id(5)], "the first window holds one match");
    assert!(
        !first.next_page_token.is_empty(),
        "the scan stopped at the window's end"
    );
    let second = list(first.next_page_token).await.unwrap().into_inner();
    assert_eq!(ids(&second), [id(10040), id(10045)]);
    assert!(
        second.next_page_token.is_empty(),
        "the tenant ends inside this window"
    );

    // An exact (unfiltered) page is not windowed; a common tag fills its page.
    let common = contacts()
        .list_contacts(t.req(ListContactsRequest {
            page_size: 50,
            tag: "common".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(common.contacts.len(), 50);
    assert!(!common.next_page_token.is_empty());
}
