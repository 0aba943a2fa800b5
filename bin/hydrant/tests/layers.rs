//! The workspace's layering, checked: contracts → runtime → pipeline → platform → consumers →
//! the binary, and no crate may import one above it (`docs/architecture.md`, "Layers").
//!
//! Reads every member's `Cargo.toml` (no cargo invocation, so it runs anywhere the sources
//! are) and fails naming each upward dependency, so a shortcut through a higher layer is seen
//! the day it is written rather than when the layers have grown into each other.
//!
//! Rules, per normal (`[dependencies]`) edge between two workspace crates:
//! - a crate may depend on any crate of a lower layer;
//! - within a layer, only on the crates marked *shared* there (a mechanism two or more roles
//!   use, such as the firehose client or the container runtime), never on a role;
//! - test kits are for `[dev-dependencies]` only.
//!
//! Dev-dependencies are free: an integration test may start any role.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Contracts,
    Runtime,
    Pipeline,
    Platform,
    Consumers,
    Bin,
    TestKit,
}

/// Every workspace crate's layer, and whether crates of its own layer may use it.
///
/// `hydrant-dashboard` is page assets only (HTML, CSS, JS as strings, no dependencies), which
/// the cloud controller serves; it sits with the contracts because it couples no code.
const LAYERS: &[(&str, Layer, bool)] = &[
    ("hydrant-envelope", Layer::Contracts, true),
    ("hydrant-api", Layer::Contracts, true),
    ("hydrant-auth", Layer::Contracts, true),
    ("hydrant-dashboard", Layer::Contracts, true),
    ("hydrant-emitter", Layer::Runtime, true),
    ("hydrant-bus", Layer::Runtime, true),
    ("hydrant-buffer", Layer::Runtime, true),
    ("hydrant-runtime", Layer::Runtime, true),
    ("hydrant-tls", Layer::Runtime, true),
    ("hydrant-agent", Layer::Pipeline, false),
    ("hydrant-doppler", Layer::Pipeline, false),
    ("hydrant-logcache", Layer::Pipeline, true),
    ("hydrant-firehose", Layer::Pipeline, false),
    ("hydrant-firehose-client", Layer::Pipeline, true),
    ("hydrant-windows", Layer::Pipeline, true),
    ("hydrant-container", Layer::Platform, true),
    ("hydrant-cloudcontroller", Layer::Platform, false),
    ("hydrant-executor", Layer::Platform, false),
    ("hydrant-router", Layer::Platform, false),
    ("hydrant-healthmanager", Layer::Platform, false),
    ("hydrant-autoscaler", Layer::Platform, false),
    ("hydrant-slo", Layer::Platform, false),
    ("hydrant-broker", Layer::Platform, false),
    ("hydrant-nozzle-core", Layer::Consumers, true),
    ("hydrant-nozzle-syslog", Layer::Consumers, false),
    ("hydrant-nozzle-datadog", Layer::Consumers, false),
    ("hydrant-nozzle-otlp", Layer::Consumers, false),
    ("hydrant-top", Layer::Consumers, false),
    ("hydrant-microcloud", Layer::Bin, true),
    ("hydrant", Layer::Bin, false),
    ("hydrant-testkit", Layer::TestKit, true),
    ("hydrant-nozzle-testkit", Layer::TestKit, true),
];

fn workspace_root() -> PathBuf {
    // This crate lives two levels below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap()
}

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("parse {path:?}: {e}"))
}

/// Each member crate's name and the workspace crates it depends on (normal dependencies).
fn members() -> BTreeMap<String, Vec<String>> {
    let root = workspace_root();
    let manifest = read_toml(&root.join("Cargo.toml"));
    let members = manifest["workspace"]["members"].as_array().unwrap();
    let mut out = BTreeMap::new();
    for member in members {
        let dir = root.join(member.as_str().unwrap());
        let crate_toml = read_toml(&dir.join("Cargo.toml"));
        let name = crate_toml["package"]["name"].as_str().unwrap().to_owned();
        let deps = crate_toml
            .get("dependencies")
            .and_then(toml::Value::as_table)
            .map(|t| {
                t.keys()
                    .filter(|k| k.starts_with("hydrant"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        out.insert(name, deps);
    }
    out
}

fn layer_of(name: &str) -> Option<(Layer, bool)> {
    LAYERS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, layer, shared)| (*layer, *shared))
}

#[test]
fn every_crate_has_a_layer() {
    let unplaced: Vec<String> = members()
        .into_keys()
        .filter(|name| layer_of(name).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "these crates have no layer; add them to LAYERS in {} and to docs/architecture.md: {unplaced:?}",
        file!()
    );
}

/// Every dependency edge of `members` that the layering forbids, as `from (layer) → to (layer)`.
fn violations(members: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (name, deps) in members {
        let Some((layer, _)) = layer_of(name) else {
            continue;
        };
        for dep in deps {
            let Some((dep_layer, dep_shared)) = layer_of(dep) else {
                continue;
            };
            let allowed = match dep_layer {
                Layer::TestKit => layer == Layer::TestKit,
                _ if layer == Layer::TestKit => true,
                _ => dep_layer < layer || (dep_layer == layer && dep_shared),
            };
            if !allowed {
                wrong.push(format!("{name} ({layer:?}) → {dep} ({dep_layer:?})"));
            }
        }
    }
    wrong
}

#[test]
fn no_crate_imports_a_layer_above_it_or_a_role_beside_it() {
    let wrong = violations(&members());
    assert!(
        wrong.is_empty(),
        "dependencies that run upward or between roles (move the shared part down a layer):\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn the_check_refuses_upward_edges_role_to_role_edges_and_test_kits() {
    let graph = |from: &str, to: &str| BTreeMap::from([(from.to_owned(), vec![to.to_owned()])]);
    // The edge this check was written after: the cloud controller took `mask_url` from a nozzle.
    assert_eq!(
        violations(&graph("hydrant-cloudcontroller", "hydrant-nozzle-core")).len(),
        1
    );
    assert_eq!(
        violations(&graph("hydrant-executor", "hydrant-router")).len(),
        1
    );
    assert_eq!(
        violations(&graph("hydrant-router", "hydrant-testkit")).len(),
        1
    );
    assert!(violations(&graph("hydrant-executor", "hydrant-container")).is_empty());
    assert!(violations(&graph("hydrant-nozzle-syslog", "hydrant-api")).is_empty());
}

/// The directory each layer's crates live in, so the tree shows the layering a reader would
/// otherwise have to look up in the table.
fn layer_dir(layer: Layer) -> &'static str {
    match layer {
        Layer::Contracts => "contracts",
        Layer::Runtime => "runtime",
        Layer::Pipeline => "pipeline",
        Layer::Platform => "platform",
        Layer::Consumers => "consumers",
        Layer::Bin => "bin",
        Layer::TestKit => "testkits",
    }
}

#[test]
fn every_crate_lives_in_its_layers_directory() {
    let root = workspace_root();
    let manifest = read_toml(&root.join("Cargo.toml"));
    let mut misplaced = Vec::new();
    for member in manifest["workspace"]["members"].as_array().unwrap() {
        let dir = member.as_str().unwrap();
        let crate_toml = read_toml(&root.join(dir).join("Cargo.toml"));
        let name = crate_toml["package"]["name"].as_str().unwrap();
        let Some((layer, _)) = layer_of(name) else {
            continue;
        };
        let top = dir.split('/').next().unwrap_or_default();
        if top != layer_dir(layer) {
            misplaced.push(format!(
                "{name} is in {dir}/ but its layer is {layer:?}: move it under {}/",
                layer_dir(layer)
            ));
        }
    }
    assert!(misplaced.is_empty(), "{misplaced:#?}");
}
