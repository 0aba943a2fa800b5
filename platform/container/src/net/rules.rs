//! Egress rules: Cloud Foundry application-security-group rules (`protocol`, `destination`,
//! `ports`, ICMP `type`/`code`, `description`) plus an `action`, parsed once and rendered as
//! nftables rule text.
//!
//! Sits between the operator's config (and the per-binding rules the services will add) and the
//! ruleset that `net.rs` loads with `nft -f -`. Invariant: a rule that validates renders to nft
//! syntax that matches exactly what the rule says and nothing more — destinations and ports are
//! merged into sorted, non-overlapping intervals, so nft never sees a conflicting set, and a
//! rule never widens when two of its pieces overlap.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Which packets a rule matches by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP, optionally limited to `ports`.
    Tcp,
    /// UDP, optionally limited to `ports`.
    Udp,
    /// ICMP, optionally limited to `type` and `code`.
    Icmp,
    /// Every protocol; `ports` must be absent.
    All,
}

impl Protocol {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::All => "all",
        }
    }
}

/// What a matching rule does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through (Cloud Foundry's only kind of ASG rule). The default.
    #[default]
    Allow,
    /// Drop it.
    Deny,
}

impl Action {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// One egress rule, with the fields of a Cloud Foundry application security group rule.
///
/// ```toml
/// [[network.rules]]
/// protocol = "tcp"
/// destination = "10.0.11.0/24"     # an IP, a CIDR, a range "10.0.0.1-10.0.0.9", or a comma list
/// ports = "5432,6379,8000-9000"    # tcp/udp only; absent = every port
/// description = "the services network"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: Protocol,
    /// IPv4 destinations: `1.2.3.4`, `10.0.0.0/8`, `10.0.0.1-10.0.0.9`, or a comma list of those.
    pub destination: String,
    /// Ports for `tcp`/`udp`: `"80"`, `"80,443"`, `"8000-9000"`, or a comma list of those.
    /// Absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// ICMP type for `icmp` (-1 or absent: every type).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i16>,
    /// ICMP code for `icmp` (-1 or absent: every code); needs `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i16>,
    /// `allow` (the default) or `deny`.
    #[serde(default)]
    pub action: Action,
    /// Free text for operators; shown by `hydrant security-groups` and kept as the nft comment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl EgressRule {
    /// A rule allowing `protocol` to `destination` (and `ports`), for code that builds rules.
    pub fn allow(protocol: Protocol, destination: &str, ports: Option<&str>) -> Self {
        Self {
            protocol,
            destination: destination.to_owned(),
            ports: ports.map(str::to_owned),
            icmp_type: None,
            code: None,
            action: Action::Allow,
            description: String::new(),
        }
    }

    /// Checks the rule; the error names the rule and what to write instead.
    pub fn validate(&self) -> Result<(), Error> {
        self.compile().map(|_| ())
    }

    /// The rule as one nft rule line (without a trailing newline).
    pub(crate) fn to_nft(&self) -> Result<String, Error> {
        Ok(self.compile()?.render())
    }

    fn compile(&self) -> Result<Compiled, Error> {
        let bad = |message: String| Error::InvalidRule {
            rule: self.summary(),
            message,
        };
        let destinations = parse_destinations(&self.destination).map_err(bad)?;
        let ports = match (&self.ports, self.protocol) {
            (None, _) => Vec::new(),
            (Some(p), Protocol::Tcp | Protocol::Udp) => parse_ports(p).map_err(bad)?,
            (Some(_), _) => {
                return Err(bad(
                    "`ports` only applies to tcp and udp: remove it or change `protocol`".into(),
                ));
            }
        };
        let icmp_type = match self.icmp_type {
            None | Some(-1) => None,
            Some(t) if self.protocol != Protocol::Icmp => {
                return Err(bad(format!("`type = {t}` only applies to icmp rules")));
            }
            Some(t) => Some(u8::try_from(t).map_err(|_| {
                bad(format!(
                    "ICMP `type = {t}` is out of range: use 0-255, or -1 for every type"
                ))
            })?),
        };
        let icmp_code = match self.code {
            None | Some(-1) => None,
            Some(c) if icmp_type.is_none() => {
                return Err(bad(format!(
                    "ICMP `code = {c}` needs a `type`: add `type = N` or remove `code`"
                )));
            }
            Some(c) => Some(u8::try_from(c).map_err(|_| {
                bad(format!(
                    "ICMP `code = {c}` is out of range: use 0-255, or -1 for every code"
                ))
            })?),
        };
        Ok(Compiled {
            protocol: self.protocol,
            destinations,
            ports,
            icmp_type,
            icmp_code,
            action: self.action,
            comment: nft_comment(&self.description),
        })
    }

    /// How error messages name this rule.
    fn summary(&self) -> String {
        let protocol = self.protocol.as_str();
        match &self.ports {
            Some(p) => format!("{protocol} {} ports {p}", self.destination),
            None => format!("{protocol} {}", self.destination),
        }
    }
}

/// A validated rule, ready to render.
struct Compiled {
    protocol: Protocol,
    destinations: Vec<(u32, u32)>,
    ports: Vec<(u16, u16)>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
    action: Action,
    comment: String,
}

impl Compiled {
    fn render(&self) -> String {
        let mut out = String::new();
        let destinations: Vec<String> = self
            .destinations
            .iter()
            .map(|&(a, b)| render_ip_interval(a, b))
            .collect();
        let _ = write!(out, "ip daddr {}", nft_set(&destinations));
        match self.protocol {
            Protocol::Tcp | Protocol::Udp => {
                let proto = if self.protocol == Protocol::Tcp {
                    "tcp"
                } else {
                    "udp"
                };
                if self.ports.is_empty() {
                    let _ = write!(out, " meta l4proto {proto}");
                } else {
                    let ports: Vec<String> = self
                        .ports
                        .iter()
                        .map(|&(a, b)| {
                            if a == b {
                                a.to_string()
                            } else {
                                format!("{a}-{b}")
                            }
                        })
                        .collect();
                    let _ = write!(out, " {proto} dport {}", nft_set(&ports));
                }
            }
            Protocol::Icmp => {
                out.push_str(" meta l4proto icmp");
                if let Some(t) = self.icmp_type {
                    let _ = write!(out, " icmp type {t}");
                }
                if let Some(c) = self.icmp_code {
                    let _ = write!(out, " icmp code {c}");
                }
            }
            Protocol::All => {}
        }
        out.push_str(match self.action {
            Action::Allow => " counter accept",
            Action::Deny => " counter drop",
        });
        if !self.comment.is_empty() {
            let _ = write!(out, " comment \"{}\"", self.comment);
        }
        out
    }
}

/// `a` alone, or `{ a, b }` when there is more than one element.
fn nft_set(items: &[String]) -> String {
    match items {
        [one] => one.clone(),
        many => format!("{{ {} }}", many.join(", ")),
    }
}

/// One address, a CIDR when the interval is exactly one, else `a-b`.
pub(crate) fn render_ip_interval(start: u32, end: u32) -> String {
    if start == end {
        return Ipv4Addr::from(start).to_string();
    }
    let size = u64::from(end - start) + 1;
    if size.is_power_of_two() && u64::from(start) % size == 0 {
        let prefix = 32 - size.trailing_zeros();
        return format!("{}/{prefix}", Ipv4Addr::from(start));
    }
    format!("{}-{}", Ipv4Addr::from(start), Ipv4Addr::from(end))
}

/// nft comments are double-quoted and at most 128 bytes; keep printable ASCII without quotes.
fn nft_comment(description: &str) -> String {
    description
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Parses `10.0.0.0/8`, `1.2.3.4`, `1.2.3.4-1.2.3.9`, or a comma list of them into sorted,
/// merged, inclusive intervals.
pub(crate) fn parse_destinations(text: &str) -> Result<Vec<(u32, u32)>, String> {
    let mut intervals = Vec::new();
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(format!(
                "destination {text:?} has an empty entry: write an IP, a CIDR or a range"
            ));
        }
        intervals.push(parse_destination(part)?);
    }
    Ok(merge(intervals))
}

fn parse_destination(part: &str) -> Result<(u32, u32), String> {
    if let Some((a, b)) = part.split_once('-') {
        let (a, b) = (parse_ip(a.trim())?, parse_ip(b.trim())?);
        if a > b {
            return Err(format!(
                "destination range {part:?} ends before it starts: write low-high"
            ));
        }
        return Ok((a, b));
    }
    if part.contains('/') {
        let (network, prefix) = parse_cidr(part)?;
        return Ok(cidr_interval(network, prefix));
    }
    let ip = parse_ip(part)?;
    Ok((ip, ip))
}

/// Parses `a.b.c.d/len`, insisting that host bits are zero (a typo otherwise widens a rule).
pub(crate) fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a CIDR: write it as a.b.c.d/len"))?;
    let ip = parse_ip(ip.trim())?;
    let prefix: u8 = len
        .trim()
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{text:?} has prefix length {len:?}: use 0-32"))?;
    let (start, _) = cidr_interval(Ipv4Addr::from(ip), prefix);
    if start != ip {
        return Err(format!(
            "{text:?} has host bits set: did you mean {}/{prefix}?",
            Ipv4Addr::from(start)
        ));
    }
    Ok((Ipv4Addr::from(ip), prefix))
}

/// The inclusive interval a CIDR covers.
pub(crate) fn cidr_interval(network: Ipv4Addr, prefix: u8) -> (u32, u32) {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let start = u32::from(network) & mask;
    (start, start | !mask)
}

fn parse_ip(text: &str) -> Result<u32, String> {
    if text.contains(':') {
        return Err(format!(
            "{text:?} is IPv6: containers have IPv6 turned off, so rules take IPv4 only"
        ));
    }
    text.parse::<Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| format!("{text:?} is not an IPv4 address"))
}

/// Parses `80`, `80,443`, `8000-9000`, or a comma list of them into merged intervals.
pub(crate) fn parse_ports(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut intervals = Vec::new();
    for part in text.split(',').map(str::trim) {
        let port = |p: &str| {
            p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!("port {p:?} in {text:?} is not a port: use 1-65535, e.g. \"80,443,8000-9000\"")
            })
        };
        let interval = match part.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(part)?, port(part)?),
        };
        if interval.0 > interval.1 {
            return Err(format!(
                "port range {part:?} ends before it starts: write low-high"
            ));
        }
        intervals.push((u32::from(interval.0), u32::from(interval.1)));
    }
    Ok(merge(intervals)
        .into_iter()
        .filter_map(|(a, b)| Some((u16::try_from(a).ok()?, u16::try_from(b).ok()?)))
        .collect())
}

/// Sorts and merges overlapping or adjacent inclusive intervals.
fn merge(mut intervals: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    intervals.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(intervals.len());
    for (a, b) in intervals {
        match out.last_mut() {
            Some(last) if u64::from(a) <= u64::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }

    #[test]
    fn destinations_parse_ips_cidrs_ranges_and_lists() {
        assert_eq!(
            parse_destinations("1.2.3.4").unwrap(),
            vec![(ip("1.2.3.4"), ip("1.2.3.4"))]
        );
        assert_eq!(
            parse_destinations("10.0.0.0/8").unwrap(),
            vec![(ip("10.0.0.0"), ip("10.255.255.255"))]
        );
        assert_eq!(
            parse_destinations("10.0.0.9-10.0.0.20, 10.0.0.1-10.0.0.10,192.168.1.1").unwrap(),
            vec![
                (ip("10.0.0.1"), ip("10.0.0.20")),
                (ip("192.168.1.1"), ip("192.168.1.1"))
            ]
        );
        assert_eq!(
            parse_destinations("0.0.0.0/0").unwrap(),
            vec![(0, u32::MAX)]
        );
    }

    #[test]
    fn bad_destinations_say_what_to_write() {
        let err = parse_destinations("10.0.0.1/8").unwrap_err();
        assert!(err.contains("did you mean 10.0.0.0/8"), "{err}");
        assert!(
            parse_destinations("10.0.0.9-10.0.0.1")
                .unwrap_err()
                .contains("low-high")
        );
        assert!(parse_destinations("::1").unwrap_err().contains("IPv6"));
        assert!(
            parse_destinations("10.0.0.0/33")
                .unwrap_err()
                .contains("0-32")
        );
        assert!(
            parse_destinations("example.com")
                .unwrap_err()
                .contains("not an IPv4")
        );
        assert!(
            parse_destinations("1.2.3.4,")
                .unwrap_err()
                .contains("empty entry")
        );
    }

    #[test]
    fn ports_parse_single_lists_and_ranges_merged() {
        assert_eq!(parse_ports("80").unwrap(), vec![(80, 80)]);
        assert_eq!(parse_ports("443, 80").unwrap(), vec![(80, 80), (443, 443)]);
        assert_eq!(
            parse_ports("8000-9000,8500,9001").unwrap(),
            vec![(8000, 9001)]
        );
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("65536").is_err());
        assert!(parse_ports("90-80").unwrap_err().contains("low-high"));
        assert!(parse_ports("http").unwrap_err().contains("1-65535"));
    }

    #[test]
    fn rules_render_to_exact_nft_matches() {
        let mut rule =
            EgressRule::allow(Protocol::Tcp, "10.0.11.0/24,10.0.12.5", Some("5432,6379"));
        rule.description = "db \"primary\"".into();
        assert_eq!(
            rule.to_nft().unwrap(),
            "ip daddr { 10.0.11.0/24, 10.0.12.5 } tcp dport { 5432, 6379 } counter accept \
             comment \"db _primary_\""
        );
        let rule = EgressRule {
            action: Action::Deny,
            ..EgressRule::allow(Protocol::All, "1.1.1.1-1.1.1.9", None)
        };
        assert_eq!(
            rule.to_nft().unwrap(),
            "ip daddr 1.1.1.1-1.1.1.9 counter drop"
        );
        let rule = EgressRule::allow(Protocol::Udp, "8.8.8.8", None);
        assert_eq!(
            rule.to_nft().unwrap(),
            "ip daddr 8.8.8.8 meta l4proto udp counter accept"
        );
        let rule = EgressRule {
            icmp_type: Some(8),
            code: Some(0),
            ..EgressRule::allow(Protocol::Icmp, "0.0.0.0/0", None)
        };
        assert_eq!(
            rule.to_nft().unwrap(),
            "ip daddr 0.0.0.0/0 meta l4proto icmp icmp type 8 icmp code 0 counter accept"
        );
    }

    #[test]
    fn rules_that_mix_fields_are_refused_with_the_fix() {
        let rule = EgressRule::allow(Protocol::Icmp, "1.2.3.4", Some("80"));
        let err = rule.validate().unwrap_err().to_string();
        assert!(
            err.contains("icmp 1.2.3.4 ports 80") && err.contains("only applies to tcp"),
            "{err}"
        );
        let rule = EgressRule {
            icmp_type: Some(3),
            ..EgressRule::allow(Protocol::Tcp, "1.2.3.4", None)
        };
        assert!(rule.validate().is_err());
        let rule = EgressRule {
            code: Some(1),
            ..EgressRule::allow(Protocol::Icmp, "1.2.3.4", None)
        };
        assert!(
            rule.validate()
                .unwrap_err()
                .to_string()
                .contains("needs a `type`")
        );
    }

    #[test]
    fn rules_read_from_config_with_cloud_foundry_field_names() {
        let rule: EgressRule = serde_json::from_str(
            r#"{"protocol": "icmp", "destination": "0.0.0.0/0", "type": -1, "code": -1}"#,
        )
        .unwrap();
        assert_eq!(rule.action, Action::Allow);
        assert_eq!(
            rule.to_nft().unwrap(),
            "ip daddr 0.0.0.0/0 meta l4proto icmp counter accept"
        );
        let unknown = serde_json::from_str::<EgressRule>(
            r#"{"protocol": "tcp", "destination": "1.2.3.4", "port": "80"}"#,
        );
        assert!(unknown.is_err());
    }
}
