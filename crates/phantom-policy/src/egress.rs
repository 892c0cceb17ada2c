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
//!   the addresses the proxy connects to. Only an address entry lets the proxy reach
//!   a private, loopback or link-local address.
//!
//! Deny wins over allow.

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

/// Addresses the proxy refuses unless an address entry allows them: loopback,
/// private, link-local, carrier-grade NAT, unspecified, multicast, broadcast,
/// documentation and other reserved ranges, IPv6 unique-local and site-local.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let [o0, o1, ..] = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o0 == 0
                || (o0 == 100 && (64..128).contains(&o1)) // 100.64/10 CGNAT
                || (o0 == 192 && o1 == 0 && a.octets()[2] == 0) // 192.0.0/24
                || (o0 == 198 && (18..20).contains(&o1)) // benchmarking
                || o0 >= 240 // reserved
        }
        IpAddr::V6(a) => {
            let s0 = a.segments()[0];
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s0 & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s0 & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (s0 == 0x2001 && a.segments()[1] == 0x0db8) // documentation
                || (s0 == 0x0064 && a.segments()[1] == 0xff9b) // NAT64 (may embed internal v4)
        }
    }
}

/// The egress policy of a limited sandbox: `network.allow` and `network.deny`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Egress {
    pub allow: Vec<EgressRule>,
    pub deny: Vec<EgressRule>,
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

    /// Whether the proxy may connect to `ip:port` (an address the requested name
    /// resolved to). `trusted`: the address came from the test-only resolver override,
    /// which may map allowed names to internal addresses (a deny entry still wins).
    pub fn decide_ip(&self, ip: IpAddr, port: u16, trusted: bool) -> Verdict {
        if let Some(rule) = self.deny.iter().find(|r| r.matches_ip(ip, port)) {
            return Verdict::Refuse(format!("denied by network.deny entry `{rule}`"));
        }
        if is_internal(ip) && !trusted && !self.allow.iter().any(|r| r.matches_ip(ip, port)) {
            return Verdict::Refuse(format!(
                "{ip} is a loopback, private or link-local address; only an address entry in network.allow (e.g. `{}`) reaches it",
                EgressRule {
                    host: HostPattern::Ip(canonical(ip)),
                    port: Some(port)
                }
            ));
        }
        Verdict::Allow
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
            e.decide_ip("10.0.0.5".parse().unwrap(), 80, false),
            Verdict::Allow
        );
        assert!(matches!(
            e.decide_ip("10.0.0.5".parse().unwrap(), 22, false),
            Verdict::Refuse(_)
        ));
        // Deny also wins over the test resolver's trust.
        assert!(matches!(
            e.decide_ip("10.0.0.5".parse().unwrap(), 22, true),
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
                matches!(e.decide_ip(ip, 443, false), Verdict::Refuse(_)),
                "{ip}"
            );
        }
        for ip in ["151.101.0.223", "8.8.8.8", "2a04:4e42::223"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_internal(ip), "{ip}");
            assert_eq!(e.decide_ip(ip, 443, false), Verdict::Allow, "{ip}");
        }
        // An address entry reaches it, on its port only; a mapped v6 form counts too.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(e.decide_ip(lo, 8080, false), Verdict::Allow);
        assert_eq!(
            e.decide_ip("::ffff:127.0.0.1".parse().unwrap(), 8080, false),
            Verdict::Allow
        );
        let Verdict::Refuse(why) = e.decide_ip(lo, 8081, false) else {
            panic!("other port")
        };
        assert!(why.contains("`127.0.0.1:8081`"), "{why}");
        // The test resolver's addresses are trusted.
        assert_eq!(e.decide_ip(lo, 9, true), Verdict::Allow);
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
}
