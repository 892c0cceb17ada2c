//! Egress rules of `network.mode: limited`: the entries of `network.allow` and
//! `network.deny`, how they are written, and how the proxy matches a destination
//! against them. Pure: the proxy (phantom-egress) calls [`Egress::decide_name`] for
//! the name a client asked for and [`Egress::decide_ip`] for every address it would
//! connect to.
//!
//! An entry is a host and an optional port:
//!
//! * `pypi.org` — exactly that name (any port); `pypi.org:443` — that name, port 443;
//! * `*.pythonhosted.org` — any name below `pythonhosted.org` (not the bare domain);
//! * `10.1.2.3`, `10.1.2.3:8080`, `::1`, `[::1]:8080` — an address, matched against
//!   the addresses the proxy connects to.
//!
//! Deny wins over allow. A name is checked twice: as asked for ([`Egress::decide_name`])
//! and, once resolved, each address ([`Egress::decide_ip`]): an address in a reserved
//! range ([`reserved_range`]: loopback, private, link-local, CGNAT, TEST-NET, ...) is
//! refused unless an address entry of `network.allow` names it, or the name is in
//! `network.allow_reserved` (a mirror on an internal network, reached by its name).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use crate::error::shown;

/// The TCP port inside the sandbox's network namespace where the proxy listens
/// (127.0.0.1 only). Any port is free in a fresh namespace; this one is the
/// customary port of HTTP proxies.
pub const PROXY_PORT: u16 = 3128;

/// What an entry matches by host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "kebab-case")]
pub enum HostPattern {
    /// A name, lower-case, without a trailing dot.
    Name(String),
    /// `*.SUFFIX`: any name ending in `.SUFFIX` (SUFFIX itself not included).
    Suffix(String),
    /// An address.
    Ip(IpAddr),
}

/// One `network.allow` / `network.deny` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressRule {
    pub host: HostPattern,
    /// None: any port.
    pub port: Option<u16>,
}

impl std::fmt::Display for EgressRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.host, self.port) {
            (HostPattern::Name(n), None) => write!(f, "{n}"),
            (HostPattern::Name(n), Some(p)) => write!(f, "{n}:{p}"),
            (HostPattern::Suffix(s), None) => write!(f, "*.{s}"),
            (HostPattern::Suffix(s), Some(p)) => write!(f, "*.{s}:{p}"),
            (HostPattern::Ip(ip), None) => write!(f, "{ip}"),
            (HostPattern::Ip(IpAddr::V6(ip)), Some(p)) => write!(f, "[{ip}]:{p}"),
            (HostPattern::Ip(ip), Some(p)) => write!(f, "{ip}:{p}"),
        }
    }
}

impl EgressRule {
    /// Parses an entry as written in `network.allow` / `network.deny`. The message
    /// completes "network.allow[0]: ...".
    pub fn parse(text: &str) -> Result<EgressRule, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty entry: write a host such as `pypi.org`, `*.pythonhosted.org` or `api.example.com:443`".into());
        }
        if let Some((scheme, rest)) = t.split_once("://") {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            return Err(format!(
                "`{}` is a URL; write only the host{}, e.g. `{}`",
                shown(t),
                if scheme.is_empty() { "" } else { " (and port)" },
                shown(if host.is_empty() { "pypi.org" } else { host })
            ));
        }
        if t.contains(['/', '?', '#', '@']) {
            let host = t.split(['/', '?', '#']).next().unwrap_or("");
            return Err(format!(
                "`{}` is not a host: write a name or an address without a path, e.g. `{}` (address ranges are not supported)",
                shown(t),
                shown(if host.is_empty() { "pypi.org" } else { host })
            ));
        }
        // [v6]:port, bare v6, host:port, host.
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{}`: missing `]` after the IPv6 address", shown(t)))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("`{}`: write `[ADDRESS]:PORT`", shown(t)))?,
                ),
            };
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| format!("`{}` is not an IPv6 address", shown(inside)))?;
            return Ok(EgressRule {
                host: HostPattern::Ip(IpAddr::V6(ip)),
                port: port.map(|p| parse_port(p, t)).transpose()?,
            });
        } else if t.matches(':').count() > 1 {
            let ip: Ipv6Addr = t.parse().map_err(|_| {
                format!(
                    "`{}` is not an IPv6 address (write a port after one as `[ADDRESS]:PORT`)",
                    shown(t)
                )
            })?;
            return Ok(EgressRule {
                host: HostPattern::Ip(IpAddr::V6(ip)),
                port: None,
            });
        } else {
            match t.split_once(':') {
                Some((h, p)) => (h, Some(parse_port(p, t)?)),
                None => (t, None),
            }
        };
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(EgressRule {
                host: HostPattern::Ip(IpAddr::V4(ip)),
                port,
            });
        }
        let host = host.to_ascii_lowercase();
        let host = if host == "*." {
            host.as_str()
        } else {
            host.strip_suffix('.').unwrap_or(&host)
        };
        let pattern = if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() {
                return Err(format!(
                    "`{}`: a wildcard needs a domain after `*.`, e.g. `*.pythonhosted.org`",
                    shown(t)
                ));
            }
            check_name(suffix, t)?;
            HostPattern::Suffix(suffix.to_string())
        } else if host == "*" {
            return Err(
                "`*` would allow every host; list the hosts, or use `*.DOMAIN` for a domain's subdomains".into(),
            );
        } else {
            if host.contains('*') {
                return Err(format!(
                    "`{}`: `*` may only come first, as in `*.example.com`",
                    shown(t)
                ));
            }
            check_name(host, t)?;
            HostPattern::Name(host.to_string())
        };
        Ok(EgressRule {
            host: pattern,
            port,
        })
    }

    fn matches_name(&self, name: &str, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
            && match &self.host {
                HostPattern::Name(n) => n == name,
                HostPattern::Suffix(s) => name
                    .strip_suffix(s.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                HostPattern::Ip(ip) => name.parse::<IpAddr>().is_ok_and(|a| a == *ip),
            }
    }

    /// Whether a host:port exists that both `self` and `other` match (ports: either
    /// any, or the same; hosts: the same name, a name below a wildcard, or nested
    /// wildcards). Addresses overlap only with the same address.
    pub fn overlaps(&self, other: &EgressRule) -> bool {
        let below = |name: &str, suffix: &str| {
            name.strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
        };
        let ports = self.port.is_none() || other.port.is_none() || self.port == other.port;
        ports
            && match (&self.host, &other.host) {
                (HostPattern::Name(a), HostPattern::Name(b)) => a == b,
                (HostPattern::Suffix(s), HostPattern::Name(n))
                | (HostPattern::Name(n), HostPattern::Suffix(s)) => below(n, s),
                (HostPattern::Suffix(a), HostPattern::Suffix(b)) => {
                    a == b || below(a, b) || below(b, a)
                }
                (HostPattern::Ip(a), HostPattern::Ip(b)) => canonical(*a) == canonical(*b),
                _ => false,
            }
    }

    /// Whether `self` (a `network.allow` entry) lets the proxy ask for some host that
    /// `entry` (a `network.allow_reserved` entry) names.
    pub fn covers(&self, entry: &EgressRule) -> bool {
        self.overlaps(entry)
    }

    /// Checks a `network.allow_reserved` entry: a name or a wildcard, not an address.
    /// The message completes "network.allow_reserved[0]: ...".
    pub fn check_reserved_entry(&self) -> Result<(), String> {
        match self.host {
            HostPattern::Ip(_) => Err(format!(
                "`{self}` is an address: write it in network.allow, where an address entry already reaches a reserved address"
            )),
            _ => Ok(()),
        }
    }

    fn matches_ip(&self, ip: IpAddr, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
            && matches!(&self.host, HostPattern::Ip(a) if canonical(*a) == canonical(ip))
    }
}

fn parse_port(p: &str, whole: &str) -> Result<u16, String> {
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(n) => Err(format!(
            "`{}`: port {n} is out of range (1 to 65535)",
            shown(whole)
        )),
        Err(_) => Err(format!(
            "`{}`: `{}` is not a port number (1 to 65535)",
            shown(whole),
            shown(p)
        )),
    }
}

/// A DNS name: labels of letters, digits, `-` and `_`, 1..=63 characters each, at most
/// 253 in all.
fn check_name(name: &str, whole: &str) -> Result<(), String> {
    let bad = name.len() > 253
        || name.split('.').any(|label| {
            label.is_empty()
                || label.len() > 63
                || label.starts_with('-')
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if bad {
        return Err(format!(
            "`{}` is not a host name: use letters, digits, `-` and `.`, e.g. `pypi.org`",
            shown(whole)
        ));
    }
    Ok(())
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The reserved IPv4 ranges: network, prefix length, and how a message names them.
/// More specific ranges come first.
#[rustfmt::skip]
const RESERVED_V4: &[([u8; 4], u8, &str)] = &[
    ([255, 255, 255, 255], 32, "255.255.255.255/32 (broadcast)"),
    ([0, 0, 0, 0], 8, "0.0.0.0/8 (\"this network\", RFC 1122)"),
    ([10, 0, 0, 0], 8, "10.0.0.0/8 (private, RFC 1918)"),
    ([100, 64, 0, 0], 10, "100.64.0.0/10 (carrier-grade NAT, RFC 6598)"),
    ([127, 0, 0, 0], 8, "127.0.0.0/8 (loopback)"),
    ([169, 254, 0, 0], 16, "169.254.0.0/16 (link-local, RFC 3927)"),
    ([172, 16, 0, 0], 12, "172.16.0.0/12 (private, RFC 1918)"),
    ([192, 0, 0, 0], 24, "192.0.0.0/24 (IETF protocol assignments, RFC 6890)"),
    ([192, 0, 2, 0], 24, "192.0.2.0/24 (TEST-NET-1 documentation, RFC 5737)"),
    ([192, 168, 0, 0], 16, "192.168.0.0/16 (private, RFC 1918)"),
    ([198, 18, 0, 0], 15, "198.18.0.0/15 (benchmarking, RFC 2544)"),
    ([198, 51, 100, 0], 24, "198.51.100.0/24 (TEST-NET-2 documentation, RFC 5737)"),
    ([203, 0, 113, 0], 24, "203.0.113.0/24 (TEST-NET-3 documentation, RFC 5737)"),
    ([224, 0, 0, 0], 4, "224.0.0.0/4 (multicast)"),
    ([240, 0, 0, 0], 4, "240.0.0.0/4 (reserved, RFC 1112)"),
];

/// The reserved IPv6 ranges, as [`RESERVED_V4`]. IPv4-mapped addresses
/// (`::ffff:a.b.c.d`) are checked as the IPv4 address they are.
#[rustfmt::skip]
const RESERVED_V6: &[([u16; 8], u8, &str)] = &[
    ([0, 0, 0, 0, 0, 0, 0, 1], 128, "::1/128 (loopback)"),
    ([0, 0, 0, 0, 0, 0, 0, 0], 128, "::/128 (unspecified)"),
    ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 32, "64:ff9b::/32 (NAT64, RFC 6052 and 8215, may embed an internal IPv4 address)"),
    ([0x2001, 0x0db8, 0, 0, 0, 0, 0, 0], 32, "2001:db8::/32 (documentation, RFC 3849)"),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "fc00::/7 (unique local, RFC 4193)"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "fe80::/10 (link-local)"),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "fec0::/10 (site-local, deprecated)"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "ff00::/8 (multicast)"),
];

/// The reserved range `ip` is in, as a message names it (`198.18.0.0/15
/// (benchmarking, RFC 2544)`), or `None` for a public address. The proxy refuses these
/// unless an address entry or `network.allow_reserved` lets it through.
pub fn reserved_range(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            RESERVED_V4.iter().find_map(|(net, len, name)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                (bits & mask == u32::from(Ipv4Addr::from(*net)) & mask).then_some(*name)
            })
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            RESERVED_V6.iter().find_map(|(net, len, name)| {
                let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                (bits & mask == u128::from(Ipv6Addr::from(*net)) & mask).then_some(*name)
            })
        }
    }
}

/// Whether `ip` is in a reserved range ([`reserved_range`]).
pub fn is_internal(ip: IpAddr) -> bool {
    reserved_range(ip).is_some()
}

/// The egress policy of a limited sandbox: `network.allow`, `network.deny` and
/// `network.allow_reserved`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Egress {
    pub allow: Vec<EgressRule>,
    pub deny: Vec<EgressRule>,
    /// Names whose reserved addresses the proxy connects to (each also in `allow`).
    pub allow_reserved: Vec<EgressRule>,
}

/// A decision, with the entry (or the rule) that made it, for the client's 403 and the
/// report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Refuse(String),
}

impl Egress {
    /// Whether `name` (as the client wrote it: a name or an address) may be asked for
    /// on `port`. Addresses the name resolves to are checked with
    /// [`Egress::decide_ip`].
    pub fn decide_name(&self, name: &str, port: u16) -> Verdict {
        let name = normalize(name);
        if let Some(rule) = self.deny.iter().find(|r| r.matches_name(&name, port)) {
            return Verdict::Refuse(format!("denied by network.deny entry `{rule}`"));
        }
        if self.allow.iter().any(|r| r.matches_name(&name, port)) {
            return Verdict::Allow;
        }
        Verdict::Refuse(if self.allow.is_empty() {
            "network.allow is empty".to_string()
        } else {
            format!("{name}:{port} is not in network.allow")
        })
    }

    /// Whether the proxy may connect to `ip:port`, an address that `name` (the host
    /// the client asked for, already allowed by [`Egress::decide_name`]) resolved to.
    /// A reserved address ([`reserved_range`]) needs an address entry in `allow`, or
    /// `name` in `allow_reserved`. `trusted`: the address came from the test-only
    /// resolver override, which may map allowed names to internal addresses. A deny
    /// entry wins over all of these.
    pub fn decide_ip(&self, name: &str, ip: IpAddr, port: u16, trusted: bool) -> Verdict {
        if let Some(rule) = self.deny.iter().find(|r| r.matches_ip(ip, port)) {
            return Verdict::Refuse(format!("denied by network.deny entry `{rule}`"));
        }
        let Some(range) = reserved_range(ip) else {
            return Verdict::Allow;
        };
        if trusted || self.allow.iter().any(|r| r.matches_ip(ip, port)) {
            return Verdict::Allow;
        }
        let name = normalize(name);
        let by_literal = name.parse::<IpAddr>().is_ok();
        if !by_literal
            && self
                .allow_reserved
                .iter()
                .any(|r| r.matches_name(&name, port))
        {
            return Verdict::Allow;
        }
        let entry = EgressRule {
            host: HostPattern::Ip(canonical(ip)),
            port: Some(port),
        };
        Verdict::Refuse(if by_literal {
            format!(
                "{ip} is in {range}, which the proxy does not reach unless an address entry in network.allow names it (e.g. `{entry}`)"
            )
        } else {
            format!(
                "{name} resolved to {ip}, which is in {range}; the proxy reaches a reserved address only for a name in network.allow_reserved (e.g. `{name}`, for a mirror you trust) or an address entry in network.allow (e.g. `{entry}`)"
            )
        })
    }
}

/// A requested host as the rules see it: lower-case, no trailing dot, no brackets.
pub fn normalize(name: &str) -> String {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow: &[&str], deny: &[&str]) -> Egress {
        let rules = |l: &[&str]| l.iter().map(|s| EgressRule::parse(s).unwrap()).collect();
        Egress {
            allow: rules(allow),
            deny: rules(deny),
            allow_reserved: Vec::new(),
        }
    }

    #[test]
    fn entries_parse_as_written() {
        let r = EgressRule::parse("PyPI.org.").unwrap();
        assert_eq!(r.host, HostPattern::Name("pypi.org".into()));
        assert_eq!(r.port, None);
        let r = EgressRule::parse("api.example.com:443").unwrap();
        assert_eq!(r.port, Some(443));
        assert_eq!(r.to_string(), "api.example.com:443");
        let r = EgressRule::parse("*.pythonhosted.org").unwrap();
        assert_eq!(r.host, HostPattern::Suffix("pythonhosted.org".into()));
        let r = EgressRule::parse("[::1]:8080").unwrap();
        assert_eq!(r.host, HostPattern::Ip("::1".parse().unwrap()));
        assert_eq!(r.to_string(), "[::1]:8080");
        let r = EgressRule::parse("10.0.0.1:22").unwrap();
        assert_eq!(r.host, HostPattern::Ip("10.0.0.1".parse().unwrap()));
        assert_eq!(
            EgressRule::parse("fe80::1").unwrap().host,
            HostPattern::Ip("fe80::1".parse().unwrap())
        );
    }

    #[test]
    fn malformed_entries_say_what_to_write() {
        for (bad, says) in [
            ("*.", "needs a domain after `*.`"),
            ("*", "would allow every host"),
            ("a.*.org", "`*` may only come first"),
            ("pypi.org:0", "port 0 is out of range"),
            ("pypi.org:70000", "port 70000 is out of range"),
            ("pypi.org:https", "not a port number"),
            ("https://pypi.org/simple", "is a URL; write only the host"),
            ("pypi.org/simple", "without a path"),
            ("10.0.0.0/8", "address ranges are not supported"),
            ("exa mple.com", "not a host name"),
            ("-bad.com", "not a host name"),
            ("a..b", "not a host name"),
            ("", "empty entry"),
            ("[::1", "missing `]`"),
            ("[::1]8080", "`[ADDRESS]:PORT`"),
            ("1:2:3:zz", "not an IPv6 address"),
        ] {
            let err = EgressRule::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        assert!(EgressRule::parse("https://pypi.org/simple")
            .unwrap_err()
            .contains("`pypi.org`"));
    }

    #[test]
    fn names_match_exactly_or_below_a_wildcard() {
        let e = egress(
            &["pypi.org", "*.pythonhosted.org", "api.example.com:443"],
            &[],
        );
        assert_eq!(e.decide_name("pypi.org", 443), Verdict::Allow);
        assert_eq!(e.decide_name("PYPI.ORG.", 80), Verdict::Allow);
        assert_eq!(e.decide_name("files.pythonhosted.org", 443), Verdict::Allow);
        assert_eq!(e.decide_name("a.b.pythonhosted.org", 443), Verdict::Allow);
        // The wildcard is for subdomains only, and a suffix must end at a dot.
        assert!(matches!(
            e.decide_name("pythonhosted.org", 443),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            e.decide_name("evilpythonhosted.org", 443),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            e.decide_name("pypi.org.evil.com", 443),
            Verdict::Refuse(_)
        ));
        assert_eq!(e.decide_name("api.example.com", 443), Verdict::Allow);
        let Verdict::Refuse(why) = e.decide_name("api.example.com", 80) else {
            panic!("port 80 is not allowed")
        };
        assert!(why.contains("not in network.allow"), "{why}");
    }

    #[test]
    fn deny_wins_over_allow() {
        let e = egress(&["*.example.com"], &["secret.example.com"]);
        assert_eq!(e.decide_name("www.example.com", 443), Verdict::Allow);
        let Verdict::Refuse(why) = e.decide_name("secret.example.com", 443) else {
            panic!("denied")
        };
        assert_eq!(why, "denied by network.deny entry `secret.example.com`");
        let e = egress(&["10.0.0.5"], &["10.0.0.5:22"]);
        assert_eq!(
            e.decide_ip("pypi.org", "10.0.0.5".parse().unwrap(), 80, false),
            Verdict::Allow
        );
        assert!(matches!(
            e.decide_ip("pypi.org", "10.0.0.5".parse().unwrap(), 22, false),
            Verdict::Refuse(_)
        ));
        // Deny also wins over the test resolver's trust.
        assert!(matches!(
            e.decide_ip("pypi.org", "10.0.0.5".parse().unwrap(), 22, true),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn internal_addresses_need_an_address_entry() {
        let e = egress(&["pypi.org", "127.0.0.1:8080"], &[]);
        for ip in [
            "127.0.0.1",
            "127.5.5.5",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_internal(ip), "{ip}");
            assert!(
                matches!(e.decide_ip("pypi.org", ip, 443, false), Verdict::Refuse(_)),
                "{ip}"
            );
        }
        for ip in ["151.101.0.223", "8.8.8.8", "2a04:4e42::223"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_internal(ip), "{ip}");
            assert_eq!(
                e.decide_ip("pypi.org", ip, 443, false),
                Verdict::Allow,
                "{ip}"
            );
        }
        // An address entry reaches it, on its port only; a mapped v6 form counts too.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(e.decide_ip("pypi.org", lo, 8080, false), Verdict::Allow);
        assert_eq!(
            e.decide_ip("pypi.org", "::ffff:127.0.0.1".parse().unwrap(), 8080, false),
            Verdict::Allow
        );
        let Verdict::Refuse(why) = e.decide_ip("pypi.org", lo, 8081, false) else {
            panic!("other port")
        };
        assert!(why.contains("`127.0.0.1:8081`"), "{why}");
        // The test resolver's addresses are trusted.
        assert_eq!(e.decide_ip("pypi.org", lo, 9, true), Verdict::Allow);
    }

    #[test]
    fn an_address_asked_for_by_literal_matches_address_entries() {
        let e = egress(&["127.0.0.1:8080"], &[]);
        assert_eq!(e.decide_name("127.0.0.1", 8080), Verdict::Allow);
        assert!(matches!(
            e.decide_name("127.0.0.1", 8081),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            e.decide_name("localhost", 8080),
            Verdict::Refuse(_)
        ));
        let Verdict::Refuse(why) = Egress::default().decide_name("pypi.org", 443) else {
            panic!("nothing allowed")
        };
        assert_eq!(why, "network.allow is empty");
    }

    #[test]
    fn a_refused_reserved_address_names_its_range() {
        let e = egress(&["pypi.org"], &[]);
        for (ip, range) in [
            ("198.18.0.7", "198.18.0.0/15 (benchmarking, RFC 2544)"),
            (
                "192.0.2.1",
                "192.0.2.0/24 (TEST-NET-1 documentation, RFC 5737)",
            ),
            ("203.0.113.9", "203.0.113.0/24 (TEST-NET-3"),
            ("127.0.0.1", "127.0.0.0/8 (loopback)"),
            ("10.1.2.3", "10.0.0.0/8 (private, RFC 1918)"),
            ("100.100.0.1", "100.64.0.0/10 (carrier-grade NAT"),
            ("169.254.169.254", "169.254.0.0/16 (link-local"),
            ("255.255.255.255", "255.255.255.255/32 (broadcast)"),
            ("::ffff:192.168.0.1", "192.168.0.0/16 (private, RFC 1918)"),
            ("fd00::1", "fc00::/7 (unique local"),
            ("2001:db8::1", "2001:db8::/32 (documentation"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                reserved_range(ip).map(|r| r.starts_with(range)),
                Some(true),
                "{ip}"
            );
            let Verdict::Refuse(why) = e.decide_ip("pypi.org", ip, 443, false) else {
                panic!("{ip} is reserved")
            };
            assert!(why.contains(range), "{why}");
            assert!(!why.contains("loopback, private or link-local"), "{why}");
            assert!(why.contains("network.allow_reserved"), "{why}");
        }
        // Neighbours of a range are public.
        for ip in ["198.20.0.1", "192.0.3.1", "100.128.0.1", "172.32.0.1"] {
            assert_eq!(reserved_range(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn allow_reserved_lets_a_named_mirror_through_and_nothing_else() {
        let mut e = egress(
            &["pypi.mirror.test", "*.corp.test", "pypi.org"],
            &["10.9.9.9"],
        );
        e.allow_reserved = vec![
            EgressRule::parse("pypi.mirror.test").unwrap(),
            EgressRule::parse("*.corp.test:443").unwrap(),
        ];
        let benchmarking: IpAddr = "198.18.0.7".parse().unwrap();
        let private: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(
            e.decide_ip("pypi.mirror.test", benchmarking, 443, false),
            Verdict::Allow
        );
        assert_eq!(
            e.decide_ip("PYPI.MIRROR.TEST.", private, 80, false),
            Verdict::Allow
        );
        assert_eq!(
            e.decide_ip("pkg.corp.test", private, 443, false),
            Verdict::Allow
        );
        // Another port of a port-bound entry, a name not listed, and an address asked
        // for by literal stay refused; deny still wins.
        assert!(matches!(
            e.decide_ip("pkg.corp.test", private, 80, false),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            e.decide_ip("pypi.org", benchmarking, 443, false),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            e.decide_ip("10.0.0.5", private, 443, false),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            e.decide_ip("pypi.mirror.test", "10.9.9.9".parse().unwrap(), 443, false),
            Verdict::Refuse(_)
        ));
        // The default refuses.
        e.allow_reserved.clear();
        assert!(matches!(
            e.decide_ip("pypi.mirror.test", benchmarking, 443, false),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn entries_overlap_by_name_wildcard_and_port() {
        let r = |s: &str| EgressRule::parse(s).unwrap();
        assert!(r("pypi.org").overlaps(&r("pypi.org:443")));
        assert!(r("*.example.com").overlaps(&r("a.example.com")));
        assert!(r("*.example.com").overlaps(&r("*.b.example.com")));
        assert!(!r("*.example.com").overlaps(&r("example.com")));
        assert!(!r("pypi.org:80").overlaps(&r("pypi.org:443")));
        assert!(!r("pypi.org").overlaps(&r("pypi.com")));
        assert!(r("10.0.0.1").check_reserved_entry().is_err());
        assert!(r("*.corp.test").check_reserved_entry().is_ok());
    }
}
