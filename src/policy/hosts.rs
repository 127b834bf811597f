//! Host patterns, as `ALLOWED_DESTINATIONS` and `DESTINATION_POLICIES`
//! write them: `api.partner.com` (any port), `*.example.com` (any
//! subdomain, any port), `host:8443` (that port only).

use std::str::FromStr;

use url::Host;

/// One host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// `api.partner.com`, `127.0.0.1`, `[::1]`: this host only.
    Exact(String),
    /// `*.example.com`: any subdomain of `example.com` (not itself).
    Subdomain(String),
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<HostPattern, String> {
        if s.contains("://") || s.contains('/') {
            return Err("a pattern is a host with an optional port, not a URL".into());
        }
        // Split off a port: `host:8443`, `[::1]:8443`; a bare IPv6 address
        // must be bracketed.
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("{p:?} is not a port"))?;
                (h, Some(port))
            }
            _ => (s, None),
        };
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        // Let the URL parser normalise the host exactly as it will for
        // destinations (case, IDNA, IP notations).
        let parsed = Host::parse(name).map_err(|e| format!("{name:?} is not a host: {e}"))?;
        let normalised = parsed.to_string();
        if wildcard && !matches!(parsed, Host::Domain(_)) {
            return Err("a wildcard needs a domain name after '*.'".into());
        }
        Ok(HostPattern {
            host: if wildcard {
                HostMatch::Subdomain(normalised)
            } else {
                HostMatch::Exact(normalised)
            },
            port,
        })
    }
}

/// The pattern as it matches: `host`, `*.suffix`, with `:port` if any.
impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            HostMatch::Exact(h) => f.write_str(h)?,
            HostMatch::Subdomain(suffix) => write!(f, "*.{suffix}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl HostPattern {
    /// Does `host` (as the URL parser normalised it) on `port` match?
    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        // `api.partner.com.` (the fully qualified form) is the same host.
        let host = host.strip_suffix('.').unwrap_or(host);
        let host_ok = match &self.host {
            HostMatch::Exact(h) => h == host,
            HostMatch::Subdomain(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        };
        host_ok && self.port.is_none_or(|p| Some(p) == port)
    }

    /// Does any of `patterns` match `url`'s host (as the URL parser
    /// normalised it) and port? A URL without a host matches none.
    pub fn any_matches(patterns: &[HostPattern], url: &url::Url) -> bool {
        let Some(host) = url.host() else {
            return false;
        };
        let host = host.to_string();
        let port = url.port_or_known_default();
        patterns.iter().any(|p| p.matches(&host, port))
    }

    /// How specific the pattern is: of two patterns matching one host, the
    /// larger wins. An exact host beats a wildcard, a longer wildcard
    /// suffix beats a shorter one, and a port beats any port.
    pub fn specificity(&self) -> (bool, usize, bool) {
        match &self.host {
            HostMatch::Exact(h) => (true, h.len(), self.port.is_some()),
            HostMatch::Subdomain(suffix) => (false, suffix.len(), self.port.is_some()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fully_qualified_host_with_its_trailing_dot_is_the_same_host() {
        let url = |u: &str| url::Url::parse(u).unwrap();
        for pattern in ["api.partner.com", "*.partner.com", "api.partner.com."] {
            let p: HostPattern = pattern.parse().unwrap();
            assert!(
                HostPattern::any_matches(
                    std::slice::from_ref(&p),
                    &url("https://api.partner.com./x")
                ),
                "{pattern}"
            );
            assert!(
                HostPattern::any_matches(
                    std::slice::from_ref(&p),
                    &url("https://api.partner.com/x")
                ),
                "{pattern}"
            );
        }
    }
}
