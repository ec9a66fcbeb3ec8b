//! ImportContacts: a client stream of rows, upserted by email in batches;
//! bad rows reported by index, never blocking good ones; a broken stream
//! leaves no half-applied batch.

use std::time::Duration;

use mosaic_proto::crm::{Contact, GetContactRequest, ImportContactsRequest, ListContactsRequest};
use prost_types::{Struct, Value, value::Kind};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use uuid::Uuid;

use crate::crm_support::{CrmTenant, contacts};

fn row(t: &CrmTenant, i: usize) -> Contact {
    Contact {
        email: format!("row{i}-{}@import.example.com", t.id.uuid().simple()),
        full_name: format!("Row {i}"),
        tags: vec!["imported".into()],
        ..Default::default()
    }
}

fn messages(rows: Vec<Contact>, per_message: usize) -> Vec<ImportContactsRequest> {
    rows.chunks(per_message)
        .map(|c| ImportContactsRequest {
            contacts: c.to_vec(),
        })
        .collect()
}

#[tokio::test]
async fn ten_thousand_rows_with_a_few_bad_ones() {
    let t = CrmTenant::new().await;
    let company = t.company("Importer").await;
    let mut rows: Vec<Contact> = (0..10_000)
        .map(|i| Contact {
            company_id: if i % 3 == 0 {
                company.company_id.clone()
            } else {
                String::new()
            },
            ..row(&t, i)
        })
        .collect();
    rows[17].email = "not-an-email".into();
    rows[2_500].tags = vec!["t".into(); 40];
    rows[5_003].company_id = "not-a-uuid".into();
    rows[7_777].company_id = Uuid::now_v7().to_string();
    rows[9_999].metadata = Some(Struct {
        fields: [(
            "blob".to_owned(),
            Value {
                kind: Some(Kind::StringValue("x".repeat(9_000))),
            },
        )]
        .into(),
    });
    let expected = [
        (17, "email", "INVALID_ARGUMENT"),
        (2_500, "tags", "INVALID_ARGUMENT"),
        (5_003, "company_id", "INVALID_ARGUMENT"),
        (7_777, "company_id", "COMPANY_NOT_FOUND"),
        (9_999, "metadata", "INVALID_ARGUMENT"),
    ];

    let reply = contacts()
        .import_contacts(t.as_role("member", tokio_stream::iter(messages(rows.clone(), 700))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.created_count, reply.updated_count, reply.failed_count),
        (9_995, 0, 5)
    );
    assert!(!reply.failures_truncated);
    let got: Vec<(i64, &str, &str)> = reply
        .failures
        .iter()
        .map(|f| (f.row_index, f.field.as_str(), f.reason.as_str()))
        .collect();
    let want: Vec<(i64, &str, &str)> = expected
        .iter()
        .map(|(i, f, r)| (*i as i64, *f, *r))
        .collect();
    assert_eq!(got, want);
    assert_eq!(t.count("contacts").await, 9_995);
    // One audit event per batch of 1000 good rows.
    assert_eq!(t.count("audit_events").await, 1 + 10);

    // The same import again only updates, and reports the same failures.
    let again = contacts()
        .import_contacts(t.req(tokio_stream::iter(messages(rows, 1_000))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.created_count, again.updated_count, again.failed_count),
        (0, 9_995, 5)
    );
    assert_eq!(t.count("contacts").await, 9_995);

    // Imported rows are ordinary contacts.
    let page = contacts()
        .list_contacts(t.req(ListContactsRequest {
            company_id: company.company_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.contacts.len(), 50);
    assert!(page.contacts.iter().all(|c| c.tags == ["imported"]));
}

#[tokio::test]
async fn later_rows_overwrite_earlier_ones_and_existing_contacts() {
    let t = CrmTenant::new().await;
    let existing = t
        .contact(&format!("old-{}@example.com", t.id.uuid().simple()))
        .await;
    let rows = vec![
        Contact {
            full_name: "First".into(),
            ..row(&t, 1)
        },
        Contact {
            email: existing.email.to_uppercase(),
            full_name: "Updated".into(),
            ..Default::default()
        },
        Contact {
            full_name: "Second".into(),
            ..row(&t, 1)
        },
        Contact {
            full_name: "Other".into(),
            ..row(&t, 2)
        },
    ];
    let reply = contacts()
        .import_contacts(t.req(tokio_stream::iter(messages(rows, 1))))
        .await
        .unwrap()
        .into_inner();
    // Row 0 creates, row 2 updates it, row 1 updates the existing contact.
    assert_eq!(
        (reply.created_count, reply.updated_count, reply.failed_count),
        (2, 2, 0)
    );
    let all = contacts()
        .list_contacts(t.req(ListContactsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .contacts;
    assert_eq!(all.len(), 3);
    let one = all.iter().find(|c| c.email == row(&t, 1).email).unwrap();
    assert_eq!(one.full_name, "Second");
    let old = contacts()
        .get_contact(t.req(GetContactRequest {
            contact_id: existing.contact_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.full_name, "Updated");
    assert_ne!(old.etag, existing.etag);
}

#[tokio::test]
async fn an_empty_or_all_bad_import_writes_nothing() {
    let t = CrmTenant::new().await;
    let reply = contacts()
        .import_contacts(t.req(tokio_stream::iter(Vec::new())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.created_count, reply.updated_count, reply.failed_count),
        (0, 0, 0)
    );
    let bad: Vec<Contact> = (0..12_000)
        .map(|_| Contact {
            email: "nope".into(),
            ..Default::default()
        })
        .collect();
    let reply = contacts()
        .import_contacts(t.req(tokio_stream::iter(messages(bad, 2_000))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.failed_count, 12_000);
    assert_eq!(reply.failures.len(), 10_000, "the list is capped");
    assert!(reply.failures_truncated);
    assert_eq!(reply.failures.last().map(|f| f.row_index), Some(9_999));
    assert_eq!(t.count("contacts").await, 0);
    assert_eq!(t.count("audit_events").await, 0);
    let e = contacts()
        .import_contacts(t.as_role("viewer", tokio_stream::iter(messages(vec![row(&t, 0)], 1))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

/// The client sends 1500 rows and then breaks the call: the first batch
/// (1000) is committed, the 500 collected after it never are.
#[tokio::test]
async fn a_broken_stream_leaves_no_half_batch() {
    let t = CrmTenant::new().await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let call = tokio::spawn({
        let req = t.req(ReceiverStream::new(rx));
        async move { contacts().import_contacts(req).await }
    });
    for m in messages((0..1_500).map(|i| row(&t, i)).collect(), 250) {
        tx.send(m).await.unwrap();
    }
    let mut waited = Duration::ZERO;
    while t.count("contacts").await < 1_000 {
        assert!(
            waited < Duration::from_secs(20),
            "the first batch was never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    // Break the call while the sender is still open: the server sees a
    // reset stream, not a clean end.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.count("contacts").await, 1_000);
    drop(tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.count("contacts").await, 1_000);
}

/// A stream message over the server's message size limit (4 MiB by
/// default) fails the call with OUT_OF_RANGE; batches committed before it
/// stay, the one being collected does not.
#[tokio::test]
async fn an_oversized_message_is_out_of_range() {
    let t = CrmTenant::new().await;
    let big = Contact {
        full_name: "x".repeat(150),
        ..row(&t, 0)
    };
    let huge = ImportContactsRequest {
        contacts: vec![big; 30_000],
    };
    let e = contacts()
        .import_contacts(t.req(tokio_stream::iter(vec![
            ImportContactsRequest {
                contacts: (0..1_200).map(|i| row(&t, i)).collect(),
            },
            huge,
        ])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert_eq!(t.count("contacts").await, 1_000);
}
