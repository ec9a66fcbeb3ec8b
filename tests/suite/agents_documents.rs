//! DocumentService: documents, the lease-based worker queue (claims never
//! shared, expired leases return documents, illegal transitions refused with
//! both states named), isolation.

use std::collections::HashSet;
use std::time::Duration;

use mosaic_proto::agents::{
    ClaimDocumentsRequest, CompleteDocumentRequest, CreateDocumentRequest, DeleteAgentRequest,
    DeleteDocumentRequest, Document, DocumentStatus, FailDocumentRequest, GetDocumentRequest,
    ListDocumentsRequest,
};
use tonic::Code;

use crate::agents_support::{AgentsTenant, agents, documents, object};
use crate::harness::{assert_bad_field, assert_error};

fn doc(name: &str, agent: &str) -> CreateDocumentRequest {
    CreateDocumentRequest {
        document: Some(Document {
            display_name: name.into(),
            source_uri: format!("https://docs.example.com/{name}.pdf"),
            agent_id: agent.into(),
            metadata: Some(object(serde_json::json!({"lang": "en"}))),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

fn claim(max: i32, lease_secs: i64) -> ClaimDocumentsRequest {
    ClaimDocumentsRequest {
        max_documents: max,
        lease: Some(prost_types::Duration {
            seconds: lease_secs,
            nanos: 0,
        }),
    }
}

fn complete(id: &str, claim: &str) -> CompleteDocumentRequest {
    CompleteDocumentRequest {
        document_id: id.into(),
        claim_id: claim.into(),
        chunk_count: 12,
        vector_count: 12,
    }
}

async fn get(t: &AgentsTenant, id: &str) -> Document {
    documents()
        .get_document(t.req(GetDocumentRequest {
            document_id: id.into(),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn list(t: &AgentsTenant, status: DocumentStatus, agent: &str) -> Vec<Document> {
    documents()
        .list_documents(t.req(ListDocumentsRequest {
            status: status as i32,
            agent_id: agent.into(),
            page_size: 1000,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .documents
}

#[tokio::test]
async fn documents_go_through_the_queue() {
    let t = AgentsTenant::new().await;
    let agent = t.agent("Kb").await;
    let a = documents()
        .create_document(t.as_role("member", doc("guide", &agent.agent_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.status, DocumentStatus::Pending as i32);
    assert_eq!(a.agent_id, agent.agent_id);
    let b = documents()
        .create_document(t.req(doc("faq", "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(get(&t, &a.document_id).await, a);
    assert_eq!(list(&t, DocumentStatus::Pending, "").await.len(), 2);
    let by_agent = list(&t, DocumentStatus::Unspecified, &agent.agent_id).await;
    assert_eq!(by_agent.len(), 1);
    assert_eq!(by_agent[0], a);

    // Claim both: one claim id, oldest first, PROCESSING with a lease.
    let claimed = documents()
        .claim_documents(t.as_role("member", claim(10, 60)))
        .await
        .unwrap()
        .into_inner();
    assert!(!claimed.claim_id.is_empty());
    let ids: Vec<&str> = claimed
        .documents
        .iter()
        .map(|d| d.document_id.as_str())
        .collect();
    assert_eq!(ids, [a.document_id.as_str(), b.document_id.as_str()]);
    for d in &claimed.documents {
        assert_eq!(d.status, DocumentStatus::Processing as i32);
        assert_eq!(d.claim_id, claimed.claim_id);
        assert!(d.lease_expire_time.is_some());
        assert_eq!(d.attempt_count, 1);
    }
    assert_eq!(list(&t, DocumentStatus::Processing, "").await.len(), 2);
    let none = documents()
        .claim_documents(t.req(claim(10, 60)))
        .await
        .unwrap()
        .into_inner();
    assert!(none.documents.is_empty() && none.claim_id.is_empty());

    // Finish with a claim that is not the document's: refused.
    let foreign = documents()
        .complete_document(t.req(complete(&a.document_id, &uuid::Uuid::now_v7().to_string())))
        .await
        .unwrap_err();
    assert_error(&foreign, Code::FailedPrecondition, "CLAIM_NOT_HELD");

    let done = documents()
        .complete_document(t.req(complete(&a.document_id, &claimed.claim_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.status, DocumentStatus::Completed as i32);
    assert_eq!((done.chunk_count, done.vector_count), (12, 12));
    assert!(done.claim_id.is_empty() && done.lease_expire_time.is_none());
    let failed = documents()
        .fail_document(t.req(FailDocumentRequest {
            document_id: b.document_id.clone(),
            claim_id: claimed.claim_id.clone(),
            error: "unreadable PDF".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.status, DocumentStatus::Failed as i32);
    assert_eq!(failed.error, "unreadable PDF");

    // Illegal transitions name both states.
    let twice = documents()
        .complete_document(t.req(complete(&a.document_id, &claimed.claim_id)))
        .await
        .unwrap_err();
    assert_error(&twice, Code::FailedPrecondition, "INVALID_TRANSITION");
    assert!(
        twice.message().contains("COMPLETED") && twice.message().contains("PROCESSING"),
        "{}",
        twice.message()
    );
    let c = documents()
        .create_document(t.req(doc("new", "")))
        .await
        .unwrap()
        .into_inner();
    let pending = documents()
        .fail_document(t.req(FailDocumentRequest {
            document_id: c.document_id.clone(),
            claim_id: claimed.claim_id.clone(),
            error: "x".into(),
        }))
        .await
        .unwrap_err();
    assert_error(&pending, Code::FailedPrecondition, "INVALID_TRANSITION");
    assert!(
        pending.message().contains("PENDING"),
        "{}",
        pending.message()
    );

    // A deleted document is never claimed.
    documents()
        .delete_document(t.req(DeleteDocumentRequest {
            document_id: c.document_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let after_delete = documents()
        .claim_documents(t.req(claim(10, 60)))
        .await
        .unwrap()
        .into_inner();
    assert!(after_delete.documents.is_empty());
    assert_eq!(
        get(&t, &c.document_id).await.status,
        DocumentStatus::Pending as i32
    );
    assert_eq!(list(&t, DocumentStatus::Completed, "").await.len(), 1);
    assert_eq!(list(&t, DocumentStatus::Failed, "").await.len(), 1);
}

#[tokio::test]
async fn concurrent_claimers_never_share_a_document_and_take_them_all() {
    let t = AgentsTenant::new().await;
    for i in 0..200 {
        documents()
            .create_document(t.req(doc(&format!("d{i}"), "")))
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let req = move || t.req(claim(7, 120));
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let out = documents()
                        .claim_documents(req())
                        .await
                        .unwrap()
                        .into_inner();
                    if out.documents.is_empty() {
                        return mine;
                    }
                    mine.extend(out.documents.into_iter().map(|d| d.document_id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 200, "every document handed out exactly once");
    assert_eq!(distinct.len(), 200, "no document handed out twice");
}

#[tokio::test]
async fn an_expired_lease_returns_the_document() {
    let t = AgentsTenant::new().await;
    let d = documents()
        .create_document(t.req(doc("slow", "")))
        .await
        .unwrap()
        .into_inner();
    let first = documents()
        .claim_documents(t.req(claim(1, 1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.documents.len(), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Reads say PENDING at once; no sweeper needed.
    let back = get(&t, &d.document_id).await;
    assert_eq!(back.status, DocumentStatus::Pending as i32);
    assert!(back.claim_id.is_empty());
    assert_eq!(list(&t, DocumentStatus::Pending, "").await.len(), 1);
    // The crashed worker's claim cannot finish it.
    let late = documents()
        .complete_document(t.req(complete(&d.document_id, &first.claim_id)))
        .await
        .unwrap_err();
    assert_error(&late, Code::FailedPrecondition, "CLAIM_NOT_HELD");
    // Another worker gets it.
    let second = documents()
        .claim_documents(t.req(claim(5, 60)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.documents.len(), 1);
    assert_eq!(second.documents[0].attempt_count, 2);
    assert_ne!(second.claim_id, first.claim_id);
    documents()
        .complete_document(t.req(complete(&d.document_id, &second.claim_id)))
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let t = AgentsTenant::new().await;
    let mut no_name = doc("x", "");
    no_name.document.as_mut().unwrap().display_name.clear();
    let mut bad_uri = doc("x", "");
    bad_uri.document.as_mut().unwrap().source_uri = "not a uri".into();
    let mut deep = doc("x", "");
    deep.document.as_mut().unwrap().metadata = Some(crate::agents_support::nested(100));
    for (req, field) in [
        (no_name, "document.display_name"),
        (bad_uri, "document.source_uri"),
        (deep, "document.metadata"),
        (doc("x", "nope"), "document.agent_id"),
    ] {
        let err = documents().create_document(t.req(req)).await.unwrap_err();
        assert_bad_field(&err, field);
    }
    // A deleted agent, or none of this tenant: NOT_FOUND naming the field.
    let agent = t.agent("gone").await;
    agents()
        .delete_agent(t.req(DeleteAgentRequest {
            agent_id: agent.agent_id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let err = documents()
        .create_document(t.req(doc("x", &agent.agent_id)))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "AGENT_NOT_FOUND");
    for (req, field) in [
        (claim(0, 60), "max_documents"),
        (claim(101, 60), "max_documents"),
        (claim(1, 0), "lease"),
        (claim(1, 3601), "lease"),
    ] {
        let err = documents().claim_documents(t.req(req)).await.unwrap_err();
        assert_bad_field(&err, field);
    }
    let err = documents()
        .complete_document(t.req(CompleteDocumentRequest {
            chunk_count: -1,
            ..complete(
                &uuid::Uuid::now_v7().to_string(),
                &uuid::Uuid::now_v7().to_string(),
            )
        }))
        .await
        .unwrap_err();
    assert_bad_field(&err, "chunk_count");
    assert_eq!(t.count("documents").await, 0);
}

#[tokio::test]
async fn another_tenant_s_documents_do_not_exist() {
    let (a, b) = (AgentsTenant::new().await, AgentsTenant::new().await);
    let agent = a.agent("A's").await;
    let d = documents()
        .create_document(a.req(doc("secret", "")))
        .await
        .unwrap()
        .into_inner();
    // B cannot attach a document to A's agent.
    let err = documents()
        .create_document(b.req(doc("x", &agent.agent_id)))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "AGENT_NOT_FOUND");
    // B's claims never hand out A's documents.
    let claimed = documents()
        .claim_documents(b.req(claim(100, 60)))
        .await
        .unwrap()
        .into_inner();
    assert!(claimed.documents.is_empty());
    let not_found = |err: tonic::Status| assert_error(&err, Code::NotFound, "DOCUMENT_NOT_FOUND");
    not_found(
        documents()
            .get_document(b.req(GetDocumentRequest {
                document_id: d.document_id.clone(),
            }))
            .await
            .unwrap_err(),
    );
    not_found(
        documents()
            .delete_document(b.req(DeleteDocumentRequest {
                document_id: d.document_id.clone(),
                etag: String::new(),
            }))
            .await
            .unwrap_err(),
    );
    // Even with A's real claim id.
    let a_claim = documents()
        .claim_documents(a.req(claim(1, 60)))
        .await
        .unwrap()
        .into_inner();
    not_found(
        documents()
            .complete_document(b.req(complete(&d.document_id, &a_claim.claim_id)))
            .await
            .unwrap_err(),
    );
    not_found(
        documents()
            .fail_document(b.req(FailDocumentRequest {
                document_id: d.document_id.clone(),
                claim_id: a_claim.claim_id.clone(),
                error: "x".into(),
            }))
            .await
            .unwrap_err(),
    );
    assert!(list(&b, DocumentStatus::Unspecified, "").await.is_empty());
    assert_eq!(
        get(&a, &d.document_id).await.status,
        DocumentStatus::Processing as i32
    );
}
