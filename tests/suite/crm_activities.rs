//! ActivityService: log (idempotent), list by subject and time range with
//! paging, daily counts, bad input, isolation.

use mosaic_proto::crm::{
    Activity, ActivityKind, CreateDealRequest, Deal, GetActivityCountsRequest,
    ListActivitiesRequest, LogActivityRequest,
};
use prost_types::Timestamp;
use tonic::Code;
use uuid::Uuid;

use crate::crm_support::{CrmTenant, activities, deals, email};
use crate::harness::{assert_bad_field, assert_error};

/// 2024-05-01T00:00:00Z plus `hours`.
fn at(hours: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 1_714_521_600 + hours * 3_600,
        nanos: 0,
    })
}

fn log(a: Activity) -> LogActivityRequest {
    LogActivityRequest {
        activity: Some(a),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn log_list_and_count() {
    let t = CrmTenant::new().await;
    let co = t.company("Acme").await;
    let c = t.contact(&email("c")).await;
    let d = deals()
        .create_deal(t.req(CreateDealRequest {
            deal: Some(Deal {
                company_id: co.company_id.clone(),
                display_name: "D".into(),
                currency_code: "USD".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    // 30 activities over three days: about the company, every other one also
    // about the contact, every third about the deal.
    let kinds = [
        ActivityKind::Email,
        ActivityKind::Call,
        ActivityKind::Meeting,
        ActivityKind::Note,
    ];
    for i in 0..30i64 {
        let a = Activity {
            kind: kinds[i as usize % 4] as i32,
            company_id: co.company_id.clone(),
            contact_id: if i % 2 == 0 {
                c.contact_id.clone()
            } else {
                String::new()
            },
            deal_id: if i % 3 == 0 {
                d.deal_id.clone()
            } else {
                String::new()
            },
            occur_time: at(i * 2),
            summary: format!("touch {i}"),
            ..Default::default()
        };
        let logged = activities()
            .log_activity(t.as_role("member", log(a)))
            .await
            .unwrap()
            .into_inner();
        assert!(logged.creator.starts_with("user:"));
    }

    // By contact, newest first, in pages.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = activities()
            .list_activities(t.as_role(
                "viewer",
                ListActivitiesRequest {
                    contact_id: c.contact_id.clone(),
                    page_size: 4,
                    page_token: token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.activities);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 15);
    let times: Vec<i64> = seen.iter().map(|a| a.occur_time.unwrap().seconds).collect();
    let mut sorted = times.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");

    // Deal and time range: [10h, 30h) holds i in 5..15, deal every third: 6, 9, 12.
    let ranged = activities()
        .list_activities(t.req(ListActivitiesRequest {
            deal_id: d.deal_id.clone(),
            start_time: at(10),
            end_time: at(30),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let summaries: Vec<&str> = ranged
        .activities
        .iter()
        .map(|a| a.summary.as_str())
        .collect();
    assert_eq!(summaries, ["touch 12", "touch 9", "touch 6"]);
    let calls = activities()
        .list_activities(t.req(ListActivitiesRequest {
            kind: ActivityKind::Call as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(calls.activities.len(), 8, "i % 4 == 1");

    // Daily counts: i*2 hours from 2024-05-01; 12 per day, the last day 6; one empty day.
    let counts = activities()
        .get_activity_counts(t.req(GetActivityCountsRequest {
            start_date: "2024-04-30".into(),
            end_date: "2024-05-03".into(),
            company_id: co.company_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let days: Vec<(&str, i64)> = counts
        .days
        .iter()
        .map(|d| (d.date.as_str(), d.total_count))
        .collect();
    assert_eq!(
        days,
        [
            ("2024-04-30", 0),
            ("2024-05-01", 12),
            ("2024-05-02", 12),
            ("2024-05-03", 6)
        ]
    );
    let first = &counts.days[1];
    assert_eq!(
        (
            first.email_count,
            first.call_count,
            first.meeting_count,
            first.note_count
        ),
        (3, 3, 3, 3)
    );
    let by_contact = activities()
        .get_activity_counts(t.req(GetActivityCountsRequest {
            start_date: "2024-05-01".into(),
            end_date: "2024-05-01".into(),
            contact_id: c.contact_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_contact.days.len(), 1);
    assert_eq!(by_contact.days[0].total_count, 6);
}

#[tokio::test]
async fn log_is_idempotent_by_request_id() {
    let t = CrmTenant::new().await;
    let co = t.company("Acme").await;
    let req = LogActivityRequest {
        activity: Some(Activity {
            kind: ActivityKind::Note as i32,
            company_id: co.company_id.clone(),
            occur_time: at(1),
            ..Default::default()
        }),
        request_id: Uuid::now_v7().to_string(),
    };
    let a = activities()
        .log_activity(t.req(req.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = activities()
        .log_activity(t.req(req))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    assert_eq!(t.count("activities").await, 1);
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let t = CrmTenant::new().await;
    let co = t.company("Acme").await;
    let ok = || Activity {
        kind: ActivityKind::Call as i32,
        company_id: co.company_id.clone(),
        occur_time: at(0),
        ..Default::default()
    };
    let far_future = Some(Timestamp {
        seconds: 4_102_444_800,
        nanos: 0,
    });
    let cases: Vec<(Activity, &str)> = vec![
        (Activity { kind: 0, ..ok() }, "activity.kind"),
        (Activity { kind: 9, ..ok() }, "activity.kind"),
        (
            Activity {
                company_id: String::new(),
                ..ok()
            },
            "activity.company_id",
        ),
        (
            Activity {
                contact_id: "nope".into(),
                ..ok()
            },
            "activity.contact_id",
        ),
        (
            Activity {
                occur_time: None,
                ..ok()
            },
            "activity.occur_time",
        ),
        (
            Activity {
                occur_time: far_future,
                ..ok()
            },
            "activity.occur_time",
        ),
        (
            Activity {
                occur_time: Some(Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..ok()
            },
            "activity.occur_time",
        ),
        (
            Activity {
                summary: "s".repeat(1001),
                ..ok()
            },
            "activity.summary",
        ),
    ];
    for (a, field) in cases {
        let e = activities().log_activity(t.req(log(a))).await.unwrap_err();
        assert_bad_field(&e, field);
    }
    let e = activities()
        .log_activity(t.req(log(Activity {
            deal_id: Uuid::now_v7().to_string(),
            ..ok()
        })))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "DEAL_NOT_FOUND");
    let bad_counts = [
        (
            GetActivityCountsRequest {
                start_date: "2024-01-01".into(),
                ..Default::default()
            },
            "end_date",
        ),
        (
            GetActivityCountsRequest {
                start_date: "2024-01-02".into(),
                end_date: "2024-01-01".into(),
                ..Default::default()
            },
            "end_date",
        ),
        (
            GetActivityCountsRequest {
                start_date: "2023-01-01".into(),
                end_date: "2024-01-02".into(),
                ..Default::default()
            },
            "end_date",
        ),
        (
            GetActivityCountsRequest {
                start_date: "2024-1-1".into(),
                end_date: "2024-01-02".into(),
                ..Default::default()
            },
            "start_date",
        ),
    ];
    for (req, field) in bad_counts {
        let e = activities()
            .get_activity_counts(t.req(req))
            .await
            .unwrap_err();
        assert_bad_field(&e, field);
    }
    let e = activities()
        .list_activities(t.req(ListActivitiesRequest {
            start_time: at(5),
            end_time: at(1),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&e, "end_time");
    assert_eq!(t.count("activities").await, 0);
}

#[tokio::test]
async fn another_tenant_sees_nothing_and_cannot_log_on_foreign_subjects() {
    let a = CrmTenant::new().await;
    let b = CrmTenant::new().await;
    let co = a.company("Acme").await;
    activities()
        .log_activity(a.req(log(Activity {
            kind: ActivityKind::Email as i32,
            company_id: co.company_id.clone(),
            occur_time: at(0),
            ..Default::default()
        })))
        .await
        .unwrap();
    let listed = activities()
        .list_activities(b.req(ListActivitiesRequest {
            company_id: co.company_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.activities.is_empty());
    let e = activities()
        .log_activity(b.req(log(Activity {
            kind: ActivityKind::Email as i32,
            company_id: co.company_id.clone(),
            occur_time: at(0),
            ..Default::default()
        })))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    let counts = activities()
        .get_activity_counts(b.req(GetActivityCountsRequest {
            start_date: "2024-05-01".into(),
            end_date: "2024-05-01".into(),
            company_id: co.company_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts.days[0].total_count, 0);
    assert_eq!(a.count("activities").await, 1);
}
