//! Opening a TCP connection to a drain: resolve, vet every address, connect to a vetted one.
//!
//! Flow: transport (syslog, syslog-tls, https) → [`Dialer::connect`] → DNS → address check →
//! `connect` to that exact address (never the name again) → TLS, if any, on top.
//!
//! Invariant: when private addresses are not allowed (drains bound by developers, served by the
//! platform), the nozzle never opens a connection to a loopback, private, link-local, shared,
//! multicast or unspecified address. The check runs on what DNS answered at connect time and
//! the connection goes to the address that was checked, so a name that re-resolves to an
//! internal address between a check and a connect (DNS rebinding) cannot slip through.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Every address the host resolved to is internal and private drains are not allowed.
    #[error(
        "{host} resolves to {addr}, a loopback/private/link-local address; an operator must \
         allow private drains (platform.allow_private = true) for the nozzle to connect there"
    )]
    Refused {
        /// The host as written in the URL.
        host: String,
        /// The first address it resolved to.
        addr: IpAddr,
    },
    /// The name did not resolve, or no address accepted the connection.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Connects to drains, with or without the private-address guard.
#[derive(Debug, Clone, Copy)]
pub struct Dialer {
    /// Allow loopback, private and link-local destinations (operator-written drains, tests).
    pub allow_private: bool,
}

impl Dialer {
    /// Resolves `host:port` and connects to the first permitted address that answers.
    ///
    /// # Errors
    /// [`DialError::Refused`] when every address is internal and that is not allowed;
    /// [`DialError::Io`] when resolution fails or no address accepts.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, DialError> {
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port)).await?.collect(),
        };
        let mut refused = None;
        let mut last_error = None;
        for addr in addrs {
            if !self.allow_private && is_internal(addr.ip()) {
                refused.get_or_insert(addr.ip());
                continue;
            }
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            return Err(DialError::Io(e));
        }
        match refused {
            Some(addr) => Err(DialError::Refused {
                host: host.to_owned(),
                addr,
            }),
            None => Err(DialError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} resolved to no address"),
            ))),
        }
    }
}

/// The platform's one outbound-address policy (`hydrant_api::drain`), shared with the cloud
/// controller's drain check and the SLO alerter's webhooks.
pub use hydrant_api::drain::is_internal;

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::{DialError, Dialer, is_internal};

    #[test]
    fn classifies_addresses() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(
                is_internal(internal.parse::<IpAddr>().unwrap()),
                "{internal}"
            );
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(public.parse::<IpAddr>().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn refuses_loopback_unless_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let guarded = Dialer {
            allow_private: false,
        };
        for host in ["127.0.0.1", "localhost"] {
            let e = guarded.connect(host, port).await.unwrap_err();
            assert!(matches!(e, DialError::Refused { .. }), "{host}: {e}");
            assert!(e.to_string().contains("allow_private"), "{e}");
        }
        let open = Dialer {
            allow_private: true,
        };
        open.connect("localhost", port).await.unwrap();
    }
}
