//! A real rsyslogd for the nozzle's tests and for `hydrant bench syslog`: imtcp with
//! octet-counted framing on a free loopback port, every parsed message written to one file
//! through a template the caller chooses; optionally behind TLS (rsyslog's `gtls` netstream
//! driver, Debian package `rsyslog-gnutls`) with a certificate the caller made.
//!
//! Flow: frames → rsyslogd (imtcp [+ gtls] → its RFC 5424 parser → omfile) → `out`, which the
//! caller reads ([`Rsyslogd::lines`] counts what has been written).
//!
//! Invariants: rsyslogd runs with its own config and work directory in a temp dir and loads no
//! input but imtcp, so the machine's syslog setup and `/dev/log` are never touched; the
//! process is killed and reaped when the handle drops.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Where the Debian package installs the daemon.
pub const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// One JSON object per message with rsyslog's own parse of every field (`raw`, `pri`, `host`,
/// `app`, `procid`, `msgid`, `sd`, `msg`): what the tests check messages against.
pub const FIELDS_TEMPLATE: &str = r#"{\"raw\":\"%rawmsg:::json%\",\"pri\":\"%pri%\",\"host\":\"%hostname:::json%\",\"app\":\"%app-name:::json%\",\"procid\":\"%procid:::json%\",\"msgid\":\"%msgid:::json%\",\"sd\":\"%structured-data:::json%\",\"msg\":\"%msg:::json%\"}\n"#;

/// One empty line per message: rsyslog still takes in, frames and parses each message, but
/// writing costs one byte, so a count of lines measures its intake rather than its formatting.
pub const COUNT_TEMPLATE: &str = r"\n";

/// PEM files for a TLS listener: the server's certificate (chain) and key, and a CA file
/// (gnutls wants one even when it does not ask clients for certificates).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate, PEM.
    pub ca: PathBuf,
    /// The server certificate, PEM.
    pub cert: PathBuf,
    /// The server's private key, PEM.
    pub key: PathBuf,
}

/// The gnutls netstream driver Debian's `rsyslog-gnutls` installs, in any multiarch dir.
fn gtls_installed() -> bool {
    std::fs::read_dir("/usr/lib").is_ok_and(|dirs| {
        dirs.flatten()
            .any(|d| d.path().join("rsyslog/lmnsd_gtls.so").exists())
    })
}

/// A running rsyslogd; killed on drop.
#[derive(Debug)]
pub struct Rsyslogd {
    child: Child,
    /// The imtcp port on 127.0.0.1.
    pub port: u16,
    /// The file every message is written to.
    pub out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
///
/// # Errors
/// The loopback bind failed.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Rsyslogd {
    /// Starts rsyslogd writing each message through `template` (an rsyslog string template,
    /// already escaped for its config syntax, e.g. [`FIELDS_TEMPLATE`]) and waits until it
    /// listens.
    ///
    /// # Errors
    /// rsyslogd is not installed, does not start, or does not listen within 10 s.
    pub fn start(template: &str) -> std::io::Result<Self> {
        Self::start_with(template, None, None)
    }

    /// As [`Rsyslogd::start`] on a given port: a drain that went down comes back where its
    /// URL points.
    ///
    /// # Errors
    /// As [`Rsyslogd::start`].
    pub fn start_on(template: &str, port: u16) -> std::io::Result<Self> {
        Self::start_with(template, None, Some(port))
    }

    /// As [`Rsyslogd::start`], the listener speaking TLS with `tls`'s certificate
    /// (anonymous clients, as syslog-tls drains are).
    ///
    /// # Errors
    /// As [`Rsyslogd::start`], or the gnutls driver (`rsyslog-gnutls`) is missing.
    pub fn start_tls(template: &str, tls: &TlsFiles) -> std::io::Result<Self> {
        Self::start_with(template, Some(tls), None)
    }

    fn start_with(
        template: &str,
        tls: Option<&TlsFiles>,
        port: Option<u16>,
    ) -> std::io::Result<Self> {
        if tls.is_some() && !gtls_installed() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "rsyslog's gtls driver is missing: install the Debian package rsyslog-gnutls",
            ));
        }
        if !Path::new(RSYSLOGD).exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{RSYSLOGD} is missing: install the Debian package rsyslog"),
            ));
        }
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("out");
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let (tls_global, tls_module) = match tls {
            Some(t) => (
                format!(
                    r#"
       defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{}"
       defaultNetstreamDriverCertFile="{}" defaultNetstreamDriverKeyFile="{}""#,
                    t.ca.display(),
                    t.cert.display(),
                    t.key.display()
                ),
                r#" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon""#,
            ),
            None => (String::new(), ""),
        };
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k"
       parser.escapeControlCharactersOnReceive="off" parser.dropTrailingLFOnReception="off"{tls_global})
module(load="imtcp" maxSessions="2000"{tls_module})
template(name="drain" type="string" string="{template}")
ruleset(name="drain") {{
  action(type="omfile" file="{out}" template="drain" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="drain" supportOctetCountedFraming="on")
"#,
            work = dir.path().display(),
            out = out.display(),
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf)?;
        let mut child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslog.pid"))
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "rsyslogd exited with {status} before listening"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("rsyslogd did not listen on {port} within 10 s"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            port,
            out,
            _dir: dir,
        })
    }

    /// Complete lines written to `out` so far (0 before the file exists).
    ///
    /// # Errors
    /// The file exists but cannot be read.
    pub fn lines(&self) -> std::io::Result<u64> {
        let mut file = match std::fs::File::open(&self.out) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut lines = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(lines);
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
    }
}
