//! The Grafana dashboards' shape (`hydrant.json` for a Prometheus fed by the OTLP nozzle,
//! `hydrant-direct.json` for one scraping the roles' `/metrics`): each imports (valid JSON, the
//! fields Grafana needs), panels fit the 24-column grid without overlapping, ids and query
//! refIds are unique, and every query reads from the dashboard's Prometheus variable. Whether
//! the metrics they name exist is checked against a running micro cloud in the `hydrant`
//! crate's `dashboard` test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeSet;

use serde_json::Value;

/// Both dashboards with the uid each must keep (Grafana links and provisioning use it).
fn dashboards() -> [(&'static str, Value); 2] {
    let parse = |name: &str, text: &str| {
        serde_json::from_str::<Value>(text).unwrap_or_else(|e| panic!("grafana/{name}: {e}"))
    };
    [
        (
            "hydrant-overview",
            parse("hydrant.json", include_str!("../grafana/hydrant.json")),
        ),
        (
            "hydrant-direct",
            parse(
                "hydrant-direct.json",
                include_str!("../grafana/hydrant-direct.json"),
            ),
        ),
    ]
}

/// Every panel, rows' nested panels included.
fn panels(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(p));
    }
    out
}

#[test]
fn panels_fit_the_grid_and_have_unique_ids() {
    for (uid, d) in dashboards() {
        panels_fit(uid, &d);
    }
}

fn panels_fit(uid: &str, d: &Value) {
    assert_eq!(d["uid"], uid);
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let all = panels(d);
    assert!(all.len() >= 15, "only {} panels", all.len());
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in &all {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id {}",
            p["id"]
        );
        assert!(!p["title"].as_str().unwrap().is_empty());
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{}: {g}", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{} overlaps another panel",
                    p["title"]
                );
            }
        }
    }
}

#[test]
fn every_query_reads_the_prometheus_variable() {
    for (_, d) in dashboards() {
        reads_the_variable(&d);
    }
}

fn reads_the_variable(d: &Value) {
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "app"]);
    for p in panels(d).into_iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        assert!(
            !p["description"].as_str().unwrap_or("").is_empty(),
            "{}",
            p["title"]
        );
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{}", p["title"]);
            assert!(!t["expr"].as_str().unwrap().is_empty());
        }
    }
}
