//! ScoreService: batch upsert (one row per company, stale entries ignored),
//! get, bad input, isolation.

use mosaic_proto::crm::{GetScoreRequest, Score, UpsertScoresRequest};
use prost_types::Timestamp;
use tonic::Code;
use uuid::Uuid;

use crate::crm_support::{CrmTenant, scores};
use crate::harness::{assert_bad_field, assert_error};

fn score(company: &str, fit: i32, seconds: i64) -> Score {
    Score {
        company_id: company.into(),
        fit,
        intent: 50,
        composite: (fit + 50) / 2,
        model_version: "m1".into(),
        compute_time: Some(Timestamp { seconds, nanos: 0 }),
        ..Default::default()
    }
}

fn upsert(s: Vec<Score>) -> UpsertScoresRequest {
    UpsertScoresRequest { scores: s }
}

#[tokio::test]
async fn upsert_then_get() {
    let t = CrmTenant::new().await;
    let a = t.company("A").await;
    let b = t.company("B").await;
    let first = scores()
        .upsert_scores(t.as_role(
            "member",
            upsert(vec![
                score(&a.company_id, 10, 1_000),
                score(&b.company_id, 20, 1_000),
            ]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (first.created_count, first.updated_count, first.stale_count),
        (2, 0, 0)
    );
    let order: Vec<&str> = first.scores.iter().map(|s| s.company_id.as_str()).collect();
    assert_eq!(order, [a.company_id.as_str(), b.company_id.as_str()]);

    // Newer replaces, older is stale and ignored.
    let second = scores()
        .upsert_scores(t.req(upsert(vec![
            score(&a.company_id, 90, 2_000),
            score(&b.company_id, 99, 500),
        ])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            second.created_count,
            second.updated_count,
            second.stale_count
        ),
        (0, 1, 1)
    );
    // One event per score written (the stale one changed nothing), besides
    // the two companies' own.
    assert_eq!(
        t.audit_counts().await,
        [
            ("company.create".into(), 2),
            ("score.create".into(), 2),
            ("score.update".into(), 1)
        ]
    );
    let got_a = scores()
        .get_score(t.as_role(
            "viewer",
            GetScoreRequest {
                company_id: a.company_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got_a.fit, got_a.composite), (90, 70));
    let got_b = scores()
        .get_score(t.req(GetScoreRequest {
            company_id: b.company_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got_b.fit, 20, "a stale score never rolls back");
    assert_eq!(t.count("scores").await, 2);

    let none = t.company("C").await;
    let e = scores()
        .get_score(t.req(GetScoreRequest {
            company_id: none.company_id,
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "SCORE_NOT_FOUND");
}

#[tokio::test]
async fn bad_input_names_the_entry_and_writes_nothing() {
    let t = CrmTenant::new().await;
    let a = t.company("A").await;
    let ok = || score(&a.company_id, 10, 1_000);
    let cases: Vec<(Score, &str)> = vec![
        (
            Score {
                company_id: String::new(),
                ..ok()
            },
            "scores[1].company_id",
        ),
        (Score { fit: 101, ..ok() }, "scores[1].fit"),
        (Score { intent: -1, ..ok() }, "scores[1].intent"),
        (
            Score {
                composite: 1000,
                ..ok()
            },
            "scores[1].composite",
        ),
        (
            Score {
                model_version: "m".repeat(65),
                ..ok()
            },
            "scores[1].model_version",
        ),
        (
            Score {
                compute_time: Some(Timestamp {
                    seconds: 4_102_444_800,
                    nanos: 0,
                }),
                ..ok()
            },
            "scores[1].compute_time",
        ),
    ];
    let other = t.company("Other").await;
    for (bad, field) in cases {
        let e = scores()
            .upsert_scores(t.req(upsert(vec![score(&other.company_id, 1, 1), bad])))
            .await
            .unwrap_err();
        assert_bad_field(&e, field);
    }
    let e = scores()
        .upsert_scores(t.req(upsert(vec![ok(), ok()])))
        .await
        .unwrap_err();
    assert_bad_field(&e, "scores[1].company_id");
    let e = scores()
        .upsert_scores(t.req(upsert(vec![])))
        .await
        .unwrap_err();
    assert_bad_field(&e, "scores");
    let e = scores()
        .upsert_scores(t.req(upsert(vec![ok(), score(&Uuid::now_v7().to_string(), 1, 1)])))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    assert!(e.message().contains("scores[1].company_id"), "{e:?}");
    let e = scores()
        .get_score(t.req(GetScoreRequest {
            company_id: "nope".into(),
        }))
        .await
        .unwrap_err();
    assert_bad_field(&e, "company_id");
    assert_eq!(t.count("scores").await, 0);
}

#[tokio::test]
async fn another_tenant_is_not_found_and_unchanged() {
    let a = CrmTenant::new().await;
    let b = CrmTenant::new().await;
    let co = a.company("A").await;
    let mine = scores()
        .upsert_scores(a.req(upsert(vec![score(&co.company_id, 10, 1_000)])))
        .await
        .unwrap()
        .into_inner();
    let e = scores()
        .get_score(b.req(GetScoreRequest {
            company_id: co.company_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "SCORE_NOT_FOUND");
    let e = scores()
        .upsert_scores(b.req(upsert(vec![score(&co.company_id, 99, 9_000)])))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    let after = scores()
        .get_score(a.req(GetScoreRequest {
            company_id: co.company_id,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, mine.scores[0]);
}
