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

use std::io::{Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cli::ok;
use hydrant_testkit::MicroCloud;

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");
const ROWS: u16 = 45;
const COLS: u16 = 200;

fn nonzero(n: u16) -> std::num::NonZero<u16> {
    std::num::NonZero::new(n).unwrap()
}

/// `hydrant top` running in a pseudo-terminal, with what it drew so far.
struct Console {
    child: Child,
    keys: ChildStdin,
    screen: Arc<Mutex<vt100::Parser>>,
}

impl Console {
    fn start(home: &std::path::Path) -> Self {
        let inner = format!("stty rows {ROWS} cols {COLS} && '{BIN}' top; sleep 1");
        let mut child = Command::new("script")
            .args(["-q", "-f", "-e", "-c", &inner, "/dev/null"])
            .env("HYDRANT_HOME", home)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("script(1) runs (util-linux)");
        let keys = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            nonzero(ROWS),
            nonzero(COLS),
            0,
        )));
        let s = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().process(&buf[..n]);
            }
        });
        Self {
            child,
            keys,
            screen,
        }
    }

    fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn type_keys(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits until `done` holds for the screen; fails naming `what` and showing the screen.
    fn wait(&self, within: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.text();
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; the screen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `HYDRANT_HOME` logged in as a new user who is only a developer in the default space; an
/// instance named `hidden` is made in another space the developer has no role in.
fn developer_home(cloud: &MicroCloud) -> tempfile::TempDir {
    let config = cloud.cli_config();
    let api = config["api"].as_str().unwrap().to_owned();
    let token = config["token"].as_str().unwrap().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let admin = hydrant_api::Client::new(&api, Some(token));
        admin
            .create_user(&hydrant_api::CreateUser {
                username: "dev".to_owned(),
                password: "developer-password".to_owned(),
                admin: false,
            })
            .await
            .unwrap();
        let spaces = admin.list_spaces().await.unwrap();
        let default = spaces.iter().find(|s| s.name == "default").unwrap();
        admin
            .assign_role(&default.guid, "dev", hydrant_api::SpaceRole::Developer)
            .await
            .unwrap();
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
    });
    let home = tempfile::tempdir().unwrap();
    std::fs::copy(
        cloud.home().join("config.json"),
        home.path().join("config.json"),
    )
    .unwrap();
    let login = Command::new(BIN)
        .args(["login", "-u", "dev"])
        .env("HYDRANT_HOME", home.path())
        .env("HYDRANT_PASSWORD", "developer-password")
        .output()
        .unwrap();
    assert!(login.status.success(), "{login:?}");
    home
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
    let mut top = Console::start(dev_home.path());
    top.wait(Duration::from_secs(60), "the developer's console", |t| {
        t.contains("developer (app streams)")
    });
    top.type_keys(":services\r");
    let listed = top.wait(
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
    top.wait(
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
    top.wait(Duration::from_secs(30), "a live SVC line", |t| {
        t.contains("ledger checkpoint complete")
    });
    top.type_keys("q");
    drop(top);

    // The operator's console reads the firehose, and at start each instance's recent lines.
    let mut operator = Console::start(cloud.home());
    operator.wait(Duration::from_secs(60), "the operator's console", |t| {
        t.contains("operator (firehose)")
    });
    operator.type_keys(":services\r");
    let listed = operator.wait(Duration::from_secs(30), "every space's instances", |t| {
        t.contains("ledger") && t.contains("hidden")
    });
    assert!(listed.contains("elsewhere"), "{listed}");
    operator.type_keys(":service ledger\r");
    operator.wait(
        Duration::from_secs(30),
        "the instance's recent SVC lines, from the log cache",
        |t| t.contains("ledger node ready") && t.contains("ledger checkpoint complete"),
    );
    operator.type_keys("q");
}
