//! Autoscaling policy endpoints end to end: validation with field-named errors, store, read,
//! list for the autoscaler, decision audit events, removal.

use hydrant_api::policy::{AutoscaleDecision, ScalingPolicy};

use crate::support::{Cc, events_of};

const POLICY: &str = r#"{
  "instance_min_count": 1, "instance_max_count": 4,
  "scaling_rules": [
    {"metric_type": "responsetime", "threshold": 200, "operator": ">", "adjustment": "+1"}
  ]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_validated_stored_listed_and_removed() {
    let (_dir, cc) = Cc::fresh("cc-autoscaling").await;
    let app = cc.app("demo").await;

    let missing = cc.admin.autoscaling_policy(&app.guid).await.unwrap_err();
    assert_eq!(missing.status(), Some(404));

    let mut bad: ScalingPolicy = serde_json::from_str(POLICY).unwrap();
    bad.scaling_rules[0].adjustment = "+x".into();
    let err = cc
        .admin
        .set_autoscaling_policy(&app.guid, &bad)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    let detail = err.detail().unwrap();
    assert!(
        detail.contains(r#"scaling_rules[0].adjustment: "+x": use +N, -N, +N% or -N%"#),
        "{detail}"
    );

    let policy = ScalingPolicy::parse(POLICY).unwrap();
    cc.admin
        .set_autoscaling_policy(&app.guid, &policy)
        .await
        .unwrap();
    assert_eq!(
        cc.admin.autoscaling_policy(&app.guid).await.unwrap(),
        policy
    );
    let all = cc.admin.autoscaling_policies().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].app_name.as_str(), &all[0].policy),
        ("demo", &policy)
    );

    cc.admin
        .record_autoscale(
            &app.guid,
            &AutoscaleDecision {
                rule: Some(0),
                metric_type: "responsetime".into(),
                value: 412.0,
                threshold: 200,
                operator: ">".into(),
                adjustment: "+1".into(),
                from: 1,
                to: 2,
                reason: "Scaling from 1 to 2 instances".into(),
            },
        )
        .await
        .unwrap();
    let events = events_of(&cc.admin, &app.guid, Some("audit.app.autoscale")).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data["value"], 412.0);

    cc.admin.delete_autoscaling_policy(&app.guid).await.unwrap();
    let gone = cc.admin.autoscaling_policy(&app.guid).await.unwrap_err();
    assert_eq!(gone.status(), Some(404));
    assert!(cc.admin.autoscaling_policies().await.unwrap().is_empty());
    cc.stop().await;
}
