//! Cells end to end through the real `hydrant` binary: `hydrant up --cells 3` runs three
//! executor cells in zones z1–z3; an app of 6 instances is spread 2/2/2; a cell killed with
//! `hydrant debug kill-cell` (silent, instances gone, as a lost host) has its instances running
//! again on the others within 10 s of its presence lapsing, while a client loop through the
//! router keeps ≥ 99 % of its requests succeeding; a cell drained with
//! `hydrant drain-cell` moves its instances with zero failed requests through the router.
//! Every step prints its timings.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "support/cli.rs"]
mod cli;
#[path = "support/router.rs"]
mod router;

use cli::{Up, text, wait_for};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

impl Up {
    fn start(extra: &[&str]) -> Self {
        Self::launch(
            tempfile::tempdir().unwrap(),
            extra,
            Stdio::null(),
            Stdio::null(),
        )
    }

    fn router(&self) -> String {
        self.endpoint("router")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Running instances of `app` per cell.
    fn running_per_cell(&self, app: &str) -> BTreeMap<String, usize> {
        let app = self.json(&["app", app, "--json"]);
        let mut out = BTreeMap::new();
        for i in app["instances"].as_array().unwrap() {
            if i["state"] == "RUNNING" {
                *out.entry(i["executor_id"].as_str().unwrap().to_owned())
                    .or_insert(0) += 1;
            }
        }
        out
    }

    /// Each cell's state, by id.
    fn cell_states(&self) -> BTreeMap<String, String> {
        self.json(&["cells", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

#[test]
fn three_cells_spread_an_app_survive_a_lost_cell_and_drain_without_a_failed_request() {
    let up = Up::start(&["--cells", "3", "--isolation", "none"]);
    wait_for(Duration::from_secs(30), "three healthy cells", || {
        up.cell_states()
            .values()
            .filter(|s| *s == "healthy")
            .count()
            == 3
    });
    let cells = up.json(&["cells", "--json"]);
    let zones: Vec<&str> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones, ["z1", "z2", "z3"]);

    // Placement: 6 instances, 2 on each cell.
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("Procfile"),
        "web: exec \"$HYDRANT_BIN\" demo-app\n",
    )
    .unwrap();
    let out = up.cli(&["push", "web", "-p", app.path().to_str().unwrap(), "-i", "6"]);
    assert!(out.status.success(), "push failed: {}", text(&out));
    wait_for(Duration::from_secs(30), "6 running instances", || {
        up.running_per_cell("web").values().sum::<usize>() == 6
    });
    let spread = up.running_per_cell("web");
    println!("placement of 6 instances: {spread:?}");
    assert_eq!(spread.values().copied().collect::<Vec<_>>(), [2, 2, 2]);

    // Steady traffic through the router from here on, counted per phase.
    let router = up.router();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let within = Duration::from_secs(10);
                match router::get_within(within, &router, "web.apps.localhost", "/").0 {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    wait_for(Duration::from_secs(10), "the client loop running", || {
        ok.load(Ordering::Relaxed) > 20
    });
    // A lost cell: its instances run again elsewhere within 10 s of its presence lapsing.
    let killed = Instant::now();
    let before_kill = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let out = up.cli(&["debug", "kill-cell", "cell-2"]);
    assert!(out.status.success(), "kill-cell failed: {}", text(&out));
    let mut lost_at = None;
    wait_for(
        Duration::from_secs(40),
        "6 running off the killed cell",
        || {
            if lost_at.is_none() && up.cell_states().get("cell-2").is_some_and(|s| s == "lost") {
                lost_at = Some(Instant::now());
            }
            let per_cell = up.running_per_cell("web");
            lost_at.is_some()
                && !per_cell.contains_key("cell-2")
                && per_cell.values().sum::<usize>() == 6
        },
    );
    let lost_at = lost_at.unwrap();
    let rescheduled = Instant::now();
    let after_kill = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let (kill_ok, kill_failed) = (after_kill.0 - before_kill.0, after_kill.1 - before_kill.1);
    println!(
        "kill-cell: presence lapsed {:.1} s after the kill; 6 running again {:.1} s after that \
         (at most this test's 100 ms poll late)",
        (lost_at - killed).as_secs_f64(),
        (rescheduled - lost_at).as_secs_f64()
    );
    // The TTL (15 s) runs from the last presence, sent at most 5 s before the kill; the slack
    // is this test's polling through the CLI.
    assert!(
        lost_at - killed <= Duration::from_secs(20),
        "the presence TTL is 15 s, yet the cell was lost only after {:?}",
        lost_at - killed
    );
    assert!(
        rescheduled - lost_at <= Duration::from_secs(10),
        "replacements took {:?} after the cell was lost",
        rescheduled - lost_at
    );
    // The router keeps the killed instances' routes (a lost host unregisters nothing) and
    // retries a refused connection on another instance.
    let rate = kill_ok as f64 * 100.0 / (kill_ok + kill_failed).max(1) as f64;
    println!("kill-cell: {kill_ok} requests succeeded, {kill_failed} failed ({rate:.2} %)");
    assert!(
        rate >= 99.0,
        "{kill_failed} of {} requests failed",
        kill_ok + kill_failed
    );

    let drained = Instant::now();
    let before_drain = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let out = up.cli(&["drain-cell", "cell-1"]);
    assert!(out.status.success(), "drain-cell failed: {}", text(&out));
    wait_for(
        Duration::from_secs(60),
        "cell-1 empty and 6 running",
        || {
            let per_cell = up.running_per_cell("web");
            !per_cell.contains_key("cell-1") && per_cell.values().sum::<usize>() == 6
        },
    );
    let moved = drained.elapsed();
    // A little more traffic after the move, on the replacements alone.
    let after = ok.load(Ordering::Relaxed) + 20;
    wait_for(Duration::from_secs(10), "traffic after the move", || {
        ok.load(Ordering::Relaxed) > after
    });
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let (ok, failed) = (
        ok.load(Ordering::Relaxed) - before_drain.0,
        failed.load(Ordering::Relaxed) - before_drain.1,
    );
    println!(
        "drain-cell: 6 instances moved in {:.1} s; {ok} requests succeeded, {failed} failed",
        moved.as_secs_f64()
    );
    assert_eq!(failed, 0, "requests failed during the evacuation");
    assert_eq!(up.cell_states()["cell-1"], "evacuating");
    let listing = text(&up.cli(&["cells"]));
    assert!(
        listing.contains("evacuating") && listing.contains("lost"),
        "{listing}"
    );
}
