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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

/// Whether `ip` is an address a developer's drain must not reach without an operator's leave:
/// loopback, RFC 1918 / unique-local, link-local, CGNAT shared space, unspecified, broadcast,
/// multicast, documentation and benchmarking ranges, and IPv4 mapped or embedded in IPv6.
#[must_use]
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 old site-local.
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] & 0xffc0) == 0xfec0
                // ::a.b.c.d (deprecated IPv4-compatible) and 64:ff9b::/96 NAT64 carry IPv4.
                || (seg[..6] == [0, 0, 0, 0, 0, 0] && is_internal_v4(embedded_v4(v6)))
                || (seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && is_internal_v4(embedded_v4(v6)))
                // 2001:db8::/32 documentation.
                || (seg[0] == 0x2001 && seg[1] == 0x0db8)
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Ipv4Addr {
    let o = v6.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // 100.64.0.0/10 carrier-grade NAT, 198.18.0.0/15 benchmarking, 192.0.0.0/24 IETF.
        || (a == 100 && (b & 0xc0) == 64)
        || (a == 198 && (b & 0xfe) == 18)
        || (a == 192 && b == 0 && c == 0)
        // 240.0.0.0/4 reserved.
        || a >= 240
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]
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
