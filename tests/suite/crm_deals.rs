//! DealService: standard methods, money and dates, stages, contact links,
//! the pipeline summary, isolation.

use mosaic_proto::crm::{
    CreateDealRequest, CurrencyTotal, Deal, DealStage, DeleteDealRequest, GetDealRequest,
    GetPipelineSummaryRequest, LinkDealContactRequest, ListDealsRequest, UndeleteDealRequest,
    UnlinkDealContactRequest, UpdateDealRequest,
};
use prost_types::FieldMask;
use tonic::Code;
use uuid::Uuid;

use crate::crm_support::{CrmTenant, deals, email};
use crate::harness::{assert_bad_field, assert_error};

fn deal(company: &str, name: &str, stage: DealStage, value: i64, currency: &str) -> Deal {
    Deal {
        company_id: company.into(),
        display_name: name.into(),
        stage: stage as i32,
        value_minor: value,
        currency_code: currency.into(),
        ..Default::default()
    }
}

fn create(d: Deal) -> CreateDealRequest {
    CreateDealRequest {
        deal: Some(d),
        request_id: String::new(),
    }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

#[tokio::test]
async fn create_get_list_update_delete_undelete() {
    let t = CrmTenant::new().await;
    let co = t.company("Acme").await;
    let buyer = t.contact(&email("buyer")).await;
    let d = deals()
        .create_deal(t.as_role(
            "member",
            create(Deal {
                primary_contact_id: buyer.contact_id.clone(),
                probability: 40,
                expected_close_date: "2025-03-31".into(),
                stage: 0,
                ..deal(
                    &co.company_id,
                    " Renewal ",
                    DealStage::Unspecified,
                    1_250_000,
                    "EUR",
                )
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.display_name, "Renewal");
    assert_eq!(d.stage, DealStage::Lead as i32, "unspecified means lead");
    assert_eq!(
        (d.value_minor, d.currency_code.as_str(), d.probability),
        (1_250_000, "EUR", 40)
    );
    assert_eq!(d.expected_close_date, "2025-03-31");
    assert_eq!(d.primary_contact_id, buyer.contact_id);
    let got = deals()
        .get_deal(t.as_role(
            "viewer",
            GetDealRequest {
                deal_id: d.deal_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, d);

    let moved = deals()
        .update_deal(t.req(UpdateDealRequest {
            deal: Some(Deal {
                deal_id: d.deal_id.clone(),
                etag: d.etag.clone(),
                stage: DealStage::Negotiation as i32,
                probability: 80,
                expected_close_date: String::new(),
                ..Default::default()
            }),
            update_mask: mask(&["stage", "probability", "expected_close_date"]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.stage, DealStage::Negotiation as i32);
    assert_eq!(moved.probability, 80);
    assert_eq!(moved.expected_close_date, "");
    assert_eq!(moved.value_minor, 1_250_000);
    let stale = deals()
        .update_deal(t.req(UpdateDealRequest {
            deal: Some(Deal {
                deal_id: d.deal_id.clone(),
                etag: d.etag.clone(),
                probability: 1,
                ..Default::default()
            }),
            update_mask: mask(&["probability"]),
        }))
        .await
        .unwrap_err();
    assert_error(&stale, Code::Aborted, "ETAG_MISMATCH");

    let listed = deals()
        .list_deals(t.req(ListDealsRequest {
            stage: DealStage::Negotiation as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.deals.len(), 1);
    let none = deals()
        .list_deals(t.req(ListDealsRequest {
            stage: DealStage::Lead as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(none.deals.is_empty());

    let deleted = deals()
        .delete_deal(t.req(DeleteDealRequest {
            deal_id: d.deal_id.clone(),
            etag: moved.etag.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.delete_time.is_some());
    let by_company = deals()
        .list_deals(t.req(ListDealsRequest {
            company_id: co.company_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(by_company.deals.is_empty());
    let e = deals()
        .link_deal_contact(t.req(LinkDealContactRequest {
            deal_id: d.deal_id.clone(),
            contact_id: buyer.contact_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::FailedPrecondition, "DEAL_DELETED");
    let restored = deals()
        .undelete_deal(t.req(UndeleteDealRequest {
            deal_id: d.deal_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(restored.delete_time.is_none());
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let t = CrmTenant::new().await;
    let co = t.company("Acme").await;
    let ok = || deal(&co.company_id, "D", DealStage::Lead, 100, "USD");
    let cases: Vec<(Deal, &str)> = vec![
        (
            Deal {
                company_id: String::new(),
                ..ok()
            },
            "deal.company_id",
        ),
        (
            Deal {
                display_name: String::new(),
                ..ok()
            },
            "deal.display_name",
        ),
        (Deal { stage: 42, ..ok() }, "deal.stage"),
        (
            Deal {
                probability: 101,
                ..ok()
            },
            "deal.probability",
        ),
        (
            Deal {
                probability: -1,
                ..ok()
            },
            "deal.probability",
        ),
        (
            Deal {
                value_minor: -5,
                ..ok()
            },
            "deal.value_minor",
        ),
        (
            Deal {
                value_minor: 1_000_000_000_000_001,
                ..ok()
            },
            "deal.value_minor",
        ),
        (
            Deal {
                currency_code: "usd".into(),
                ..ok()
            },
            "deal.currency_code",
        ),
        (
            Deal {
                currency_code: String::new(),
                ..ok()
            },
            "deal.currency_code",
        ),
        (
            Deal {
                expected_close_date: "2025-02-30".into(),
                ..ok()
            },
            "deal.expected_close_date",
        ),
        (
            Deal {
                expected_close_date: "31/12/2025".into(),
                ..ok()
            },
            "deal.expected_close_date",
        ),
        (
            Deal {
                primary_contact_id: "x".into(),
                ..ok()
            },
            "deal.primary_contact_id",
        ),
    ];
    for (d, field) in cases {
        let e = deals().create_deal(t.req(create(d))).await.unwrap_err();
        assert_bad_field(&e, field);
    }
    let e = deals()
        .create_deal(t.req(create(Deal {
            company_id: Uuid::now_v7().to_string(),
            ..ok()
        })))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    let e = deals()
        .create_deal(t.req(create(Deal {
            primary_contact_id: Uuid::now_v7().to_string(),
            ..ok()
        })))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "CONTACT_NOT_FOUND");
    let e = deals()
        .list_deals(t.req(ListDealsRequest {
            stage: 99,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_bad_field(&e, "stage");
    // An update naming the stage must set it.
    let d = deals()
        .create_deal(t.req(create(ok())))
        .await
        .unwrap()
        .into_inner();
    let e = deals()
        .update_deal(t.req(UpdateDealRequest {
            deal: Some(Deal {
                deal_id: d.deal_id.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["stage"]),
        }))
        .await
        .unwrap_err();
    assert_bad_field(&e, "deal.stage");
    assert_eq!(t.count("deals").await, 1);
}

#[tokio::test]
async fn links_and_unlinks_contacts() {
    let t = CrmTenant::new().await;
    let co = t.company("Acme").await;
    let d = deals()
        .create_deal(t.req(create(deal(&co.company_id, "D", DealStage::Lead, 0, "USD"))))
        .await
        .unwrap()
        .into_inner();
    let a = t.contact(&email("a")).await;
    let b = t.contact(&email("b")).await;
    let link = |contact: &str| LinkDealContactRequest {
        deal_id: d.deal_id.clone(),
        contact_id: contact.into(),
    };
    let once = deals()
        .link_deal_contact(t.as_role("member", link(&a.contact_id)))
        .await
        .unwrap()
        .into_inner();
    let twice = deals()
        .link_deal_contact(t.req(link(&a.contact_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(once.contact_ids, std::slice::from_ref(&a.contact_id));
    assert_eq!(
        twice.etag, once.etag,
        "linking a linked contact changes nothing"
    );
    let both = deals()
        .link_deal_contact(t.req(link(&b.contact_id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        both.contact_ids,
        [a.contact_id.clone(), b.contact_id.clone()],
        "link order"
    );

    // Another tenant's contact, or an unknown one, is NOT_FOUND.
    let foreign = CrmTenant::new().await.contact(&email("x")).await;
    for id in [foreign.contact_id, Uuid::now_v7().to_string()] {
        let e = deals()
            .link_deal_contact(t.req(link(&id)))
            .await
            .unwrap_err();
        assert_error(&e, Code::NotFound, "CONTACT_NOT_FOUND");
    }
    let unlinked = deals()
        .unlink_deal_contact(t.req(UnlinkDealContactRequest {
            deal_id: d.deal_id.clone(),
            contact_id: a.contact_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unlinked.contact_ids, std::slice::from_ref(&b.contact_id));
    let e = deals()
        .unlink_deal_contact(t.req(UnlinkDealContactRequest {
            deal_id: d.deal_id.clone(),
            contact_id: a.contact_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "DEAL_CONTACT_NOT_LINKED");
    let e = deals()
        .link_deal_contact(t.as_role("viewer", link(&a.contact_id)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn pipeline_summary_counts_and_sums_per_stage_and_currency() {
    let t = CrmTenant::new().await;
    let acme = t.company("Acme").await;
    let globex = t.company("Globex").await;
    let rows = [
        (&acme, DealStage::Lead, 100, "USD"),
        (&acme, DealStage::Lead, 250, "USD"),
        (&acme, DealStage::Lead, 70, "EUR"),
        (&globex, DealStage::Lead, 1_000, "USD"),
        (&acme, DealStage::ClosedWon, 5_000, "USD"),
    ];
    for (co, stage, value, currency) in rows {
        deals()
            .create_deal(t.req(create(deal(&co.company_id, "D", stage, value, currency))))
            .await
            .unwrap();
    }
    // A deleted deal does not count.
    let gone = deals()
        .create_deal(t.req(create(deal(
            &acme.company_id,
            "Gone",
            DealStage::Lead,
            9,
            "USD",
        ))))
        .await
        .unwrap()
        .into_inner();
    deals()
        .delete_deal(t.req(DeleteDealRequest {
            deal_id: gone.deal_id,
            etag: String::new(),
        }))
        .await
        .unwrap();

    let all = deals()
        .get_pipeline_summary(t.as_role("viewer", GetPipelineSummaryRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let stages: Vec<i32> = all.stages.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        (1..=6).collect::<Vec<_>>(),
        "every stage in pipeline order"
    );
    let lead = &all.stages[0];
    assert_eq!(lead.deal_count, 4);
    let total = |c: &str, v: i64, n: i64| CurrencyTotal {
        currency_code: c.into(),
        value_minor: v,
        deal_count: n,
    };
    assert_eq!(lead.totals, [total("EUR", 70, 1), total("USD", 1_350, 3)]);
    assert_eq!(all.stages[4].totals, [total("USD", 5_000, 1)]);
    assert_eq!(all.stages[1].deal_count, 0);

    let one = deals()
        .get_pipeline_summary(t.req(GetPipelineSummaryRequest {
            company_id: globex.company_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.stages[0].totals, [total("USD", 1_000, 1)]);
    let other = deals()
        .get_pipeline_summary(
            CrmTenant::new()
                .await
                .req(GetPipelineSummaryRequest::default()),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(other.stages.iter().all(|s| s.deal_count == 0));
}

#[tokio::test]
async fn another_tenant_is_not_found_and_unchanged() {
    let a = CrmTenant::new().await;
    let b = CrmTenant::new().await;
    let co = a.company("Acme").await;
    let ca = a.contact(&email("a")).await;
    let d = deals()
        .create_deal(a.req(create(deal(
            &co.company_id,
            "Mine",
            DealStage::Lead,
            1,
            "USD",
        ))))
        .await
        .unwrap()
        .into_inner();
    let id = d.deal_id.clone();
    let e = deals()
        .get_deal(b.req(GetDealRequest {
            deal_id: id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "DEAL_NOT_FOUND");
    let e = deals()
        .update_deal(b.req(UpdateDealRequest {
            deal: Some(Deal {
                deal_id: id.clone(),
                display_name: "Theirs".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name"]),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "DEAL_NOT_FOUND");
    let e = deals()
        .delete_deal(b.req(DeleteDealRequest {
            deal_id: id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "DEAL_NOT_FOUND");
    let e = deals()
        .undelete_deal(b.req(UndeleteDealRequest {
            deal_id: id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "DEAL_NOT_FOUND");
    let bc = b.contact(&email("b")).await;
    let e = deals()
        .link_deal_contact(b.req(LinkDealContactRequest {
            deal_id: id.clone(),
            contact_id: bc.contact_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "DEAL_NOT_FOUND");
    let e = deals()
        .unlink_deal_contact(b.req(UnlinkDealContactRequest {
            deal_id: id.clone(),
            contact_id: ca.contact_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "DEAL_NOT_FOUND");
    // B cannot hang a deal on A's company either, even by its id.
    let e = deals()
        .create_deal(b.req(create(deal(&co.company_id, "X", DealStage::Lead, 1, "USD"))))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "COMPANY_NOT_FOUND");
    let listed = deals()
        .list_deals(b.req(ListDealsRequest {
            company_id: co.company_id.clone(),
            show_deleted: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.deals.is_empty());
    let summary = deals()
        .get_pipeline_summary(b.req(GetPipelineSummaryRequest {
            company_id: co.company_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(summary.stages.iter().all(|s| s.deal_count == 0));
    let after = deals()
        .get_deal(a.req(GetDealRequest { deal_id: id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, d);
}
