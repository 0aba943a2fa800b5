//! `hydrant top`'s services screen end to end, as a space developer: a real micro cloud
//! (`--isolation none`, no root needed), the real binary in a pseudo-terminal (`script`), the
//! screen read back through a terminal emulator (`vt100`). The developer's console lists the
//! service instances of their own space and not another space's, and opening one shows the
//! instance's own `SVC` line — which only its own stream, authorised by the instance's log
//! token, can have brought (a developer may not read the firehose). The operator's console
//! lists every space's instances and shows an instance's lines from before it started.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

#[path = "support/cli.rs"]
mod cli;
#[path = "support/console.rs"]
mod console;

use std::time::Duration;

use cli::{BIN, ok};
use console::Console;
use hydrant_testkit::MicroCloud;

const ROWS: u16 = 45;
const COLS: u16 = 200;

/// A `HYDRANT_HOME` logged in as a developer in the default space; an instance named `hidden`
/// is made in another space the developer has no role in.
fn developer_home(cloud: &MicroCloud) -> tempfile::TempDir {
    console::developer_home(cloud, |admin| async move {
        let elsewhere = admin.create_space("elsewhere").await.unwrap();
        admin
            .create_service_instance(&hydrant_api::services::CreateServiceInstance {
                name: "hidden".to_owned(),
                space: Some(elsewhere.guid.clone()),
                kind: hydrant_api::services::ServiceInstanceType::UserProvided,
                credentials: Some(serde_json::json!({"uri": "kv://hidden.example:1"})),
                ..hydrant_api::services::CreateServiceInstance::default()
            })
            .await
            .unwrap();
    })
}

#[test]
fn a_developers_console_shows_their_own_service_instances_and_their_svc_lines() {
    let cloud = MicroCloud::start(BIN, &["--isolation", "none"]);
    ok(&cloud.cli(&[
        "create-user-provided-service",
        "ledger",
        "-p",
        r#"{"uri": "kv://ledger.example:1"}"#,
    ]));
    let guid = ok(&cloud.cli(&["service", "ledger", "--guid"]))
        .trim()
        .to_owned();
    ok(&cloud.cli(&[
        "emit",
        &guid,
        "--message",
        "ledger node ready for connections",
        "--source-type",
        "SVC",
    ]));
    let dev_home = developer_home(&cloud);
    let mut top = Console::start(dev_home.path(), (ROWS, COLS), "");
    top.wait_until(Duration::from_secs(60), "the developer's console", |t| {
        t.contains("developer (app streams)")
    });
    top.type_keys(":services\r");
    let listed = top.wait_until(
        Duration::from_secs(30),
        "the services screen listing ledger",
        |t| {
            t.lines()
                .any(|l| l.contains("ledger") && l.contains("user-provided"))
        },
    );
    assert!(
        !listed.contains("hidden"),
        "another space's instance is not shown to this developer:\n{listed}"
    );
    top.type_keys(":service ledger\r");
    top.wait_until(
        Duration::from_secs(30),
        "the instance's SVC line, from its own stream",
        |t| t.contains("[SVC/0] OUT ledger node ready for connections"),
    );
    // A line written now arrives live as well.
    ok(&cloud.cli(&[
        "emit",
        &guid,
        "--message",
        "ledger checkpoint complete",
        "--source-type",
        "SVC",
    ]));
    top.wait_until(Duration::from_secs(30), "a live SVC line", |t| {
        t.contains("ledger checkpoint complete")
    });
    top.type_keys("q");
    drop(top);

    // The operator's console reads the firehose, and at start each instance's recent lines.
    let mut operator = Console::start(cloud.home(), (ROWS, COLS), "");
    operator.wait_until(Duration::from_secs(60), "the operator's console", |t| {
        t.contains("operator (firehose)")
    });
    operator.type_keys(":services\r");
    let listed = operator.wait_until(Duration::from_secs(30), "every space's instances", |t| {
        t.contains("ledger") && t.contains("hidden")
    });
    assert!(listed.contains("elsewhere"), "{listed}");
    operator.type_keys(":service ledger\r");
    operator.wait_until(
        Duration::from_secs(30),
        "the instance's recent SVC lines, from the log cache",
        |t| t.contains("ledger node ready") && t.contains("ledger checkpoint complete"),
    );
    operator.type_keys("q");
}
