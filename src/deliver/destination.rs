//! Destination policy (spec §6): which URLs the processor may call.
//!
//! A processor that replays any request found in a queue is an SSRF engine
//! unless it is careful, so the defaults are strict:
//!
//! * the scheme is `http` or `https`;
//! * when `ALLOWED_DESTINATIONS` is set, the host must match one of its
//!   patterns;
//! * unless `ALLOW_PRIVATE_DESTINATIONS=true`, no address the host stands
//!   for may be loopback, private, link-local (the instance metadata service
//!   among them), unspecified or otherwise not globally routable.
//!
//! [`DestinationPolicy::check`] decides all it can from the URL alone,
//! including IP literals in whatever notation the URL parser accepts (it
//! normalises `2130706433` and `0x7f.1` to `127.0.0.1`). Names are checked on
//! the addresses they resolve to, inside the HTTP client's resolver
//! ([`crate::deliver`]), so the addresses checked are the ones connected to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

pub use crate::policy::hosts::HostPattern;

/// The whole destination policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    /// Empty means any host.
    pub allowed: Vec<HostPattern>,
    pub allow_private: bool,
}

/// Why a destination was refused. Safe to log: it names only the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("host {0} is not in ALLOWED_DESTINATIONS")]
    NotListed(String),
    #[error("{0} is a private, loopback, link-local or otherwise non-public address")]
    PrivateAddress(String),
    #[error("URL has no host")]
    NoHost,
}

impl DestinationPolicy {
    /// Everything that can be decided from the URL alone.
    pub fn check(&self, url: &Url) -> Result<(), NotAllowed> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(NotAllowed::Scheme(url.scheme().to_owned()));
        }
        let host = url.host().ok_or(NotAllowed::NoHost)?;
        if !self.allowed.is_empty() && !HostPattern::any_matches(&self.allowed, url) {
            return Err(NotAllowed::NotListed(host.to_string()));
        }
        let literal = match host {
            Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            Host::Domain(_) => None,
        };
        if let Some(ip) = literal {
            self.check_address(ip)?;
        }
        Ok(())
    }

    /// The check made on every address a name resolves to.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), NotAllowed> {
        if self.allow_private || is_public(ip) {
            Ok(())
        } else {
            Err(NotAllowed::PrivateAddress(ip.to_string()))
        }
    }
}

/// Is this address globally routable, and so safe to call by default?
///
/// Refused: unspecified, loopback, RFC 1918, carrier-grade NAT, link-local
/// (169.254.0.0/16 holds the metadata service), "this network", multicast,
/// broadcast, documentation and benchmarking ranges, RFC 4193 unique-local
/// (fd00:ec2::254 is the IPv6 metadata service), IPv6 link-local, and IPv6
/// forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4), which
/// are judged by the address they embed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, RFC 4193
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)) // documentation
}

/// The IPv4 address inside an IPv6 one, for the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, but not ::1/::)
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(low),
        // 64:ff9b::a.b.c.d (NAT64)
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 2002:AABB:CCDD::/48 (6to4)
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(allowed: &[&str], allow_private: bool) -> DestinationPolicy {
        DestinationPolicy {
            allowed: allowed.iter().map(|p| p.parse().unwrap()).collect(),
            allow_private,
        }
    }

    fn check(p: &DestinationPolicy, url: &str) -> Result<(), NotAllowed> {
        p.check(&Url::parse(url).unwrap())
    }

    #[test]
    fn an_empty_allow_list_means_any_public_host() {
        let p = policy(&[], false);
        assert_eq!(check(&p, "https://api.partner.com/x"), Ok(()));
        assert_eq!(check(&p, "http://93.184.216.34:8080/"), Ok(()));
    }

    #[test]
    fn only_http_and_https_are_allowed() {
        let p = policy(&[], true);
        for url in [
            "ftp://x.example.com/",
            "file:///etc/passwd",
            "gopher://x.example.com/",
        ] {
            assert!(
                matches!(
                    check(&p, url),
                    Err(NotAllowed::Scheme(_) | NotAllowed::NoHost)
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn patterns_match_as_the_contract_says() {
        let p = policy(
            &[
                "api.partner.com",
                "*.example.com",
                "host.internal:8443",
                "127.0.0.1:8080",
            ],
            true,
        );
        let ok = [
            "https://api.partner.com/v1",
            "http://api.partner.com:9999/",
            "https://API.Partner.COM/",
            "https://a.example.com/",
            "https://a.b.example.com:444/",
            "https://host.internal:8443/",
            "http://127.0.0.1:8080/",
        ];
        let refused = [
            "https://partner.com/",
            "https://evilapi.partner.com/",
            "https://example.com/",
            "https://aexample.com/",
            "https://example.com.evil.net/",
            "https://host.internal/",
            "http://host.internal:8444/",
            "http://127.0.0.1:8081/",
            "http://127.0.0.1/",
        ];
        for url in ok {
            assert_eq!(check(&p, url), Ok(()), "{url}");
        }
        for url in refused {
            assert!(
                matches!(check(&p, url), Err(NotAllowed::NotListed(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn default_ports_count_for_port_patterns() {
        let p = policy(&["secure.example.com:443"], false);
        assert_eq!(check(&p, "https://secure.example.com/"), Ok(()));
        assert!(check(&p, "http://secure.example.com/").is_err());
    }

    #[test]
    fn bad_patterns_are_refused() {
        for s in [
            "http://x.com",
            "x.com/path",
            "*.1.2.3.4",
            "x.com:99999",
            "bad host",
        ] {
            assert!(s.parse::<HostPattern>().is_err(), "{s}");
        }
        assert!("[::1]:8080".parse::<HostPattern>().is_ok());
    }

    #[test]
    fn private_literals_are_refused_in_every_notation() {
        let p = policy(&[], false);
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://224.0.0.1/",
            "http://[64:ff9b::10.0.0.1]/",
            "http://[2002:7f00:1::]/",
        ] {
            assert!(
                matches!(check(&p, url), Err(NotAllowed::PrivateAddress(_))),
                "{url}"
            );
            assert_eq!(
                check(&policy(&[], true), url),
                Ok(()),
                "{url} with ALLOW_PRIVATE_DESTINATIONS"
            );
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    proptest! {
        #[test]
        fn mapped_addresses_are_judged_like_their_ipv4(a: u8, b: u8, c: u8, d: u8) {
            let v4 = Ipv4Addr::new(a, b, c, d);
            prop_assert_eq!(is_public(IpAddr::V6(v4.to_ipv6_mapped())), is_public(IpAddr::V4(v4)));
        }

        #[test]
        fn pattern_parsing_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<HostPattern>();
        }
    }
}
