//! Syslog drains bound to apps: what a developer binds (`hydrant drain NAME URL`), what the
//! platform's syslog nozzle reads to know where each app's logs go, and the status the nozzle
//! reports back so `hydrant drain NAME --status` can show a developer their drain's health.
//!
//! Flow: CLI → `POST /v3/apps/{guid}/drains` → cloud controller (validates the URL, refuses
//! private addresses unless the operator allows them) → `GET /v3/drain_targets` (admin) → the
//! syslog nozzle → `PUT /v3/drain_status` (admin) → `GET /v3/apps/{guid}/drains` → CLI.
//!
//! Invariant: only [`DrainTarget`] carries a drain URL with its credentials, and only admin
//! tokens can read it; everything a developer or a log line sees is masked.
//!
//! It also holds the one policy for every outbound connection the platform makes to a URL a
//! tenant wrote (syslog drains, SLO webhooks, later service brokers): [`Outbound`] refuses
//! loopback, private, link-local and other internal addresses ([`is_internal`]), checked on
//! what DNS answered, unless the operator allows them; the caller connects only to the
//! addresses it let through, so a name re-resolving between check and connect cannot slip by.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// `POST /v3/apps/{guid}/drains` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDrain {
    /// `syslog://`, `syslog-tls://` or `https://` URL, with Cloud Foundry's query options
    /// (`drain-data=logs|metrics|traces|all`, `disable-metadata=true`).
    pub url: String,
}

/// A drain as the app's developer sees it: URL masked, with the nozzle's last report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The binding's id.
    pub guid: String,
    /// The app whose logs it receives.
    pub app_guid: String,
    /// The drain URL with any password masked.
    pub url: String,
    /// When it was bound, UNIX seconds.
    pub created_at: i64,
    /// The nozzle's last report, if one has arrived since the binding was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DrainStatus>,
}

/// A drain as the syslog nozzle needs it (admin only): the full URL and the names that go into
/// syslog's HOSTNAME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainTarget {
    /// The binding's id.
    pub guid: String,
    /// The app whose envelopes (by `source_id`) the drain receives.
    pub app_guid: String,
    /// The app's name.
    pub app_name: String,
    /// The app's space name.
    pub space_name: String,
    /// The full URL, credentials included.
    pub url: String,
}

/// What the nozzle reports about one drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    /// The binding's id ([`DrainTarget::guid`]).
    pub guid: String,
    /// Messages the drain accepted since the nozzle started.
    pub sent: u64,
    /// Messages lost on the way to the drain since the nozzle started.
    pub dropped: u64,
    /// Messages queued for the drain now.
    pub queue_depth: u64,
    /// Age of the oldest queued message, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// The last failure, credentials masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the drain last accepted a batch, UNIX ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_unix_ms: Option<u64>,
    /// Where the drain stands.
    pub state: DrainState,
    /// When the cloud controller received this report, UNIX seconds (set by the server).
    #[serde(default)]
    pub reported_at: i64,
}

/// Where a drain stands, as its nozzle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Delivering.
    Ok,
    /// The last batch failed; it is being retried.
    Retrying,
    /// The drain failed too often; the nozzle is not trying it for a while (circuit open).
    Open,
    /// The drain resolves to a loopback, private or link-local address and the operator has not
    /// allowed those.
    Refused,
}

impl DrainState {
    /// The word `hydrant drain NAME --status` prints.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Retrying => "retrying",
            Self::Open => "failing (paused)",
            Self::Refused => "refused (private address)",
        }
    }
}

/// The policy for a connection the platform makes to a URL a tenant controls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outbound {
    /// Let the connection reach loopback, private and link-local addresses (an operator's
    /// switch, for their own drains and for tests). Default false.
    pub allow_private: bool,
}

/// A destination the [`Outbound`] policy refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host} resolves to {addr}, a loopback, private or link-local address; the platform does \
     not connect there unless an operator allows private destinations"
)]
pub struct OutboundRefused {
    /// The host as the tenant wrote it.
    pub host: String,
    /// The first refused address it resolved to.
    pub addr: IpAddr,
}

impl Outbound {
    /// The addresses of `addrs` (what `host` resolved to) a connection may go to, in order.
    ///
    /// # Errors
    /// [`OutboundRefused`] when every address is internal and that is not allowed; an empty
    /// `addrs` gives an empty list, which the caller reports as "resolved to nothing".
    pub fn vet(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, OutboundRefused> {
        let mut refused = None;
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|addr| {
                let ok = self.allow_private || !is_internal(addr.ip());
                if !ok {
                    refused.get_or_insert(addr.ip());
                }
                ok
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (true, Some(addr)) => Err(OutboundRefused {
                host: host.to_owned(),
                addr,
            }),
            _ => Ok(allowed),
        }
    }

    /// Whether `host` (as written in a URL, brackets stripped) is an IP literal the policy
    /// refuses; a name is not judged here (it is judged after DNS, by [`Outbound::vet`]).
    #[must_use]
    pub fn refuses_literal(&self, host: &str) -> Option<IpAddr> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok()?;
        (!self.allow_private && is_internal(ip)).then_some(ip)
    }
}

/// Whether `ip` is an address a tenant's URL must not reach without an operator's leave:
/// loopback, RFC 1918 / unique-local, link-local (cloud metadata services live there), CGNAT
/// shared space, unspecified, broadcast, multicast, benchmarking and reserved ranges, and
/// IPv4 mapped or embedded in IPv6. The documentation ranges (`203.0.113.0/24`,
/// `2001:db8::/32`, ...) reach nothing, internal or not, and stand for public hosts in
/// examples and tests.
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
        || a == 0
        // 100.64.0.0/10 carrier-grade NAT, 198.18.0.0/15 benchmarking, 192.0.0.0/24 IETF.
        || (a == 100 && (b & 0xc0) == 64)
        || (a == 198 && (b & 0xfe) == 18)
        || (a == 192 && b == 0 && c == 0)
        // 240.0.0.0/4 reserved.
        || a >= 240
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test code")]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use super::{Outbound, is_internal};

    #[test]
    fn internal_addresses_are_refused_after_dns_unless_allowed() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in [
            "1.1.1.1",
            "172.32.0.1",
            "203.0.113.7",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
        let metadata: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let public: SocketAddr = "1.1.1.1:80".parse().unwrap();
        let guarded = Outbound::default();
        let e = guarded.vet("hooks.example", [metadata]).unwrap_err();
        assert_eq!(e.addr, metadata.ip());
        assert!(e.to_string().contains("hooks.example"), "{e}");
        assert_eq!(
            guarded.vet("mixed.example", [metadata, public]).unwrap(),
            vec![public],
            "only the allowed addresses are dialled"
        );
        let open = Outbound {
            allow_private: true,
        };
        assert_eq!(open.vet("h", [metadata]).unwrap(), vec![metadata]);
        assert_eq!(
            guarded.refuses_literal("[::1]"),
            Some("::1".parse::<IpAddr>().unwrap())
        );
        assert_eq!(guarded.refuses_literal("hooks.example"), None);
        assert_eq!(open.refuses_literal("127.0.0.1"), None);
    }
}
