//! `hydrant top` end to end: a real micro cloud with the demo app (`hydrant up --demo`), the real
//! binary in a pseudo-terminal, keys typed into it and the screen read back through a terminal
//! emulator (`vt100`).
//!
//! `script` gives the console a pseudo-terminal that is its controlling terminal (as a shell
//! would); `stty` sizes it first, and after the console exits `stty -a` prints the terminal's
//! modes, so the test sees that raw mode was undone — not just that the process ended.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "support/console.rs"]
mod console;

use std::time::{Duration, Instant};

use console::{Console, developer_home};
use hydrant_testkit::MicroCloud;

const ROWS: u16 = 45;
const COLS: u16 = 160;
/// After the console exits: its status, and the terminal modes it left.
const THEN: &str = "echo TOP-EXIT=$?; stty -a;";

/// The fields of the first table row that starts with `name` (whitespace-separated, the
/// border removed).
fn row<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    text.lines()
        .map(|l| l.trim_matches('│').trim())
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().collect())
}

fn number(field: &str) -> Option<f64> {
    let (digits, scale) = match field.strip_suffix('k') {
        Some(d) => (d, 1e3),
        None => (field, 1.0),
    };
    digits.parse::<f64>().ok().map(|v| v * scale)
}

#[test]
fn top_follows_the_demo_app_drills_in_and_out_shows_the_pipeline_restores_the_terminal_and_serves_a_developer()
 {
    let cloud = MicroCloud::start(env!("CARGO_BIN_EXE_hydrant"), &["--demo"]);
    let mut top = Console::start(cloud.home(), (ROWS, COLS), THEN);

    // The apps screen: the demo app with requests, latency and status counts.
    fn fields(text: &str) -> Option<Vec<&str>> {
        row(text, "demo").filter(|f| f.len() >= 17)
    }
    let first = top.wait(
        Duration::from_secs(120),
        "the demo app's row with live request rates and latency",
        |text| {
            let f = fields(text)?;
            // NAME STATE INST CPU% MEM REQ/1 REQ/10 REQ/60 P50 P95 P99 2XX 3XX 4XX 5XX LOG/S ...
            let req10 = number(f[6])?;
            let p95_is_latency = f[9].ends_with("ms") || f[9].ends_with("µs");
            (req10 > 0.0 && p95_is_latency && number(f[11])? > 0.0)
                .then(|| (number(f[11]).unwrap_or(0.0), f[8].to_owned()))
        },
    );
    // Moving: the 2xx count of the last minute keeps changing as traffic flows.
    top.wait(Duration::from_secs(20), "the 2xx count to move", |text| {
        let f = fields(text)?;
        (number(f[11])? != first.0).then_some(())
    });
    let text = top.text();
    assert!(text.contains("operator (firehose)"), "{text}");
    assert!(text.contains("REQ/60"), "{text}");

    // Enter drills into the demo app (the busiest, so selected): instances, sparklines, logs.
    top.type_keys("\r");
    top.wait(Duration::from_secs(10), "the demo app's detail", |text| {
        (text.contains("instances")
            && text.contains("requests/s")
            && text.contains("logs (live)")
            && text.contains("[APP/PROC/WEB/"))
        .then_some(())
    });
    let log_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("[APP/PROC/WEB/") || l.contains("[RTR/"))
            .map(ToOwned::to_owned)
            .collect()
    };
    let before = log_lines(&top.text());
    top.wait(
        Duration::from_secs(10),
        "the live log pane to move",
        |text| (log_lines(text).last() != before.last()).then_some(()),
    );
    // Instance states come from the API, polled every few seconds.
    top.wait(
        Duration::from_secs(20),
        "the instances running, per the API",
        |text| (text.contains("RUNNING") && text.contains("autoscaler")).then_some(()),
    );

    // Esc goes back to the apps.
    top.type_keys("\x1b");
    top.wait(Duration::from_secs(10), "the apps screen again", |text| {
        (text.contains("apps (") && fields(text).is_some()).then_some(())
    });

    // `:pipeline`: every hop of the pipeline with live rates from its own metrics.
    top.type_keys(":pipeline\r");
    let (agent_in, doppler_out) = top.wait(
        Duration::from_secs(30),
        "the pipeline screen with the agent's and the doppler's rates",
        |text| {
            if !text.contains("pipeline (") {
                return None;
            }
            let agent = row(text, "agent")?;
            let doppler = row(text, "doppler")?;
            let a = number(agent.get(3)?)?;
            let d = number(doppler.get(4)?)?;
            (a > 0.0 && d > 0.0).then_some((a, d))
        },
    );
    assert!(agent_in > 0.0 && doppler_out > 0.0);
    let text = top.text();
    assert!(text.contains("trafficcontroller"), "{text}");
    assert!(text.contains("DROPS BY REASON"), "{text}");

    // `q` quits; the terminal is back in cooked mode on the main screen.
    top.type_keys("q");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !top.raw().contains("TOP-EXIT=") {
        assert!(Instant::now() < deadline, "hydrant top did not exit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !top.raw().contains("icanon") {
        assert!(Instant::now() < deadline, "stty -a printed nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let raw = top.raw();
    assert!(raw.contains("TOP-EXIT=0"), "hydrant top failed:\n{raw}");
    let exit = raw.find("TOP-EXIT=").unwrap();
    let modes = &raw[exit..];
    for (mode, word) in [("canonical input", "icanon"), ("echo", "echo")] {
        assert!(
            modes.split_whitespace().any(|w| w == word),
            "{mode} was not restored: {modes}"
        );
        assert!(
            !modes.split_whitespace().any(|w| w == format!("-{word}")),
            "{mode} is still off: {modes}"
        );
    }
    let before_exit = &raw[..exit];
    let left = before_exit
        .rfind("\x1b[?1049l")
        .expect("left the alternate screen");
    assert!(
        before_exit.rfind("\x1b[?1049h").unwrap() < left,
        "the alternate screen was entered after it was left"
    );
    assert!(
        before_exit[left..].contains("\x1b[?25h"),
        "the cursor was not shown again"
    );
    assert!(
        !top.alternate_screen(),
        "the terminal is still on the alternate screen"
    );
    drop(top);

    // A developer without admin rights: the console reads the app's own stream.
    let dev_home = developer_home(&cloud, |_| async {});
    let mut dev = Console::start(dev_home.path(), (ROWS, COLS), THEN);
    dev.wait(
        Duration::from_secs(60),
        "the developer's console with the demo app's live numbers",
        |text| {
            let f = fields(text)?;
            (text.contains("developer (app streams)") && number(f[6])? > 0.0).then_some(())
        },
    );
    dev.type_keys(":pipeline\r");
    dev.wait(
        Duration::from_secs(10),
        "the pipeline screen explaining it needs the firehose",
        |text| text.contains("no pipeline metrics").then_some(()),
    );
    dev.type_keys("q");
    dev.wait(
        Duration::from_secs(15),
        "the developer's console to exit",
        |_| dev.raw().contains("TOP-EXIT=0").then_some(()),
    );
    drop(dev);

    // The terminal goes away under the console (the ssh session drops, the terminal window
    // is closed): it must exit, not linger spinning on a dead terminal.
    let mut gone = Console::start(dev_home.path(), (ROWS, COLS), THEN);
    gone.wait(Duration::from_secs(60), "the console to draw", |text| {
        text.contains("hydrant top").then_some(())
    });
    let pids = consoles_in(dev_home.path());
    assert!(!pids.is_empty(), "found the console's process");
    gone.child.kill().unwrap();
    gone.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !consoles_in(dev_home.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "hydrant top still runs 10 s after its terminal hung up: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Live `hydrant top` processes whose `HYDRANT_HOME` is `home`.
fn consoles_in(home: &std::path::Path) -> Vec<u32> {
    let wanted = format!("HYDRANT_HOME={}", home.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_top = args.first().is_some_and(|a| a.ends_with(b"hydrant"))
            && args.get(1).is_some_and(|a| *a == b"top");
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if is_top && !zombie && environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes()) {
            found.push(pid);
        }
    }
    found
}
