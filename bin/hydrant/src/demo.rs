//! `hydrant up --demo`: pushes the demo app into the fresh micro cloud, gives it two SLOs and
//! drives light traffic at it through the router, so a newcomer sees logs, request metrics,
//! latency and error budgets move at once.
//!
//! The push goes through the same public API the CLI uses (nothing here reaches into a role),
//! and the traffic goes through the router like any client's, so every signal a user then
//! watches (`hydrant logs demo`, the router's Timer envelopes) is produced the real way.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use hydrant_api::slo::{Sli, Slo, SloSet};
use hydrant_api::{BuildState, Client, CreateApp, CreateBuild};
use tokio_util::sync::CancellationToken;

/// The demo app's name, and so its route: `demo.<apps domain>`.
pub const DEMO_APP: &str = "demo";

/// Pushes and starts the demo app (idempotent: an existing `demo` is re-staged and restarted).
pub async fn push(api: &str, token: &str, data_dir: &Path) -> anyhow::Result<()> {
    let dir = data_dir.join("demo-app");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("Procfile"),
        "web: exec \"$HYDRANT_BIN\" demo-app\n",
    )
    .with_context(|| format!("cannot write the demo app into {}", dir.display()))?;
    let client = Client::new(api, Some(token.to_owned()));
    let app = match client.app_by_name(DEMO_APP, None).await {
        Ok(app) => app,
        Err(hydrant_api::Error::Api { status: 404, .. }) => {
            client
                .create_app(&CreateApp {
                    name: DEMO_APP.to_owned(),
                    instances: Some(2),
                    memory_mb: Some(64),
                    ..CreateApp::default()
                })
                .await?
        }
        Err(e) => return Err(e.into()),
    };
    let outcome = client.push_dir(&app.guid, &dir).await?;
    let build = client
        .create_build(
            &app.guid,
            &CreateBuild {
                package_guid: Some(outcome.package.guid),
            },
        )
        .await?;
    let build = client
        .wait_for_build(&build.guid, Duration::from_secs(120))
        .await?;
    anyhow::ensure!(
        build.state == BuildState::Staged,
        "staging the demo app failed: {}",
        build.error.unwrap_or_default()
    );
    client.restart_app(&app.guid).await?;
    // Two SLOs, so the console and dashboard show budgets burning from the first minute (the
    // traffic below answers ~5 % 500s: an availability SLO of 99 % burns at about 5×). An
    // existing set, perhaps the user's own, is left alone.
    let existing = client.app_slos(&app.guid).await?;
    if existing.slos.is_empty() {
        client.set_slos(&app.guid, &demo_slos()).await?;
    }
    Ok(())
}

fn demo_slos() -> SloSet {
    let availability = Slo {
        name: "availability".to_owned(),
        sli: Sli::Availability {
            count_router_errors: true,
        },
        objective: 99.0,
        period_days: 30,
        min_requests: 50,
        webhook_url: None,
        description: Some("Share of requests the demo app answers without a 5xx".to_owned()),
    };
    let latency = Slo {
        name: "latency".to_owned(),
        sli: Sli::Latency { threshold_ms: 250 },
        objective: 95.0,
        description: Some("Share of requests answered within 250 ms".to_owned()),
        ..availability.clone()
    };
    SloSet {
        slos: vec![availability, latency],
    }
}

/// Sends a request every ~100 ms through the router: mostly fast successes, some slow ones,
/// a few 500s and 404s, until `shutdown`.
pub async fn drive_traffic(router: String, apps_domain: String, shutdown: CancellationToken) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build();
    let Ok(client) = client else {
        return;
    };
    let host = format!("{DEMO_APP}.{apps_domain}");
    loop {
        let roll = fastrand::u32(0..100);
        let path = match roll {
            0..=79 => "/".to_owned(),
            80..=91 => format!("/delay/{}", fastrand::u32(5..250)),
            92..=96 => "/status/500".to_owned(),
            _ => "/status/404".to_owned(),
        };
        let request = client
            .get(format!("{router}{path}"))
            .header("host", &host)
            .header("user-agent", "hydrant-demo-traffic")
            .send();
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = request => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(60 + u64::from(fastrand::u32(0..80)))) => {}
        }
    }
}
