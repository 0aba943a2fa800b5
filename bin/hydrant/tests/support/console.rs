//! `hydrant top` under test as a user runs it: the real binary in a pseudo-terminal that is its
//! controlling terminal (`script`, as a shell would give it), sized by `stty`, its output read
//! back through a terminal emulator (`vt100`) and kept raw too; and a `HYDRANT_HOME` logged in
//! as a developer who holds one role in the default space.
//!
//! Included by path (`#[path = "support/console.rs"] mod console;`) by the console's end-to-end
//! tests. Invariant: every wait has a deadline and fails showing the screen it last saw; the
//! console is killed when its handle is dropped, whatever the test did.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hydrant_testkit::MicroCloud;

const BIN: &str = env!("CARGO_BIN_EXE_hydrant");

fn nonzero(n: u16) -> std::num::NonZero<u16> {
    std::num::NonZero::new(n).unwrap()
}

/// `hydrant top` running in a pseudo-terminal, with what it drew so far.
pub struct Console {
    pub child: Child,
    keys: ChildStdin,
    screen: Arc<Mutex<vt100::Parser>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Console {
    /// `hydrant top` in `home` on a `rows` x `cols` terminal; `then` is shell run in the same
    /// terminal after the console exits (e.g. `echo TOP-EXIT=$?; stty -a;` to see its exit
    /// and the modes it left).
    pub fn start(home: &std::path::Path, (rows, cols): (u16, u16), then: &str) -> Self {
        let inner = format!("stty rows {rows} cols {cols} && '{BIN}' top; {then} sleep 1");
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
            nonzero(rows),
            nonzero(cols),
            0,
        )));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (Arc::clone(&screen), Arc::clone(&raw));
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().process(&buf[..n]);
                r.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            child,
            keys,
            screen,
            raw,
        }
    }

    /// The screen as it stands.
    pub fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// Whether the console is on the terminal's alternate screen (left when it exits).
    pub fn alternate_screen(&self) -> bool {
        self.screen.lock().unwrap().screen().alternate_screen()
    }

    /// Everything the terminal received, escape sequences included.
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }

    pub fn type_keys(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits until `check` finds what it wants on the screen; fails naming `what` and showing
    /// the screen.
    pub fn wait<T>(
        &self,
        within: Duration,
        what: &str,
        mut check: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let text = self.text();
            if let Some(found) = check(&text) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; the screen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `done` holds for the screen; the screen then.
    pub fn wait_until(&self, within: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
        self.wait(within, what, |text| done(text).then(|| text.to_owned()))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `HYDRANT_HOME` logged in as a new user `dev` who is only a developer in the default space;
/// `also` runs first with the admin's client (to make what the developer must not see).
pub fn developer_home<F, Fut>(cloud: &MicroCloud, also: F) -> tempfile::TempDir
where
    F: FnOnce(hydrant_api::Client) -> Fut,
    Fut: Future<Output = ()>,
{
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
        also(admin).await;
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
