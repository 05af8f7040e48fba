//! The client's address behind a reverse proxy the operator trusts (`trusted_proxies`).
//!
//! Only for a request whose TCP peer is in `trusted_proxies` is the client read from
//! `Forwarded` (RFC 7239, its `for=` parameters) or, without it, `X-Forwarded-For`: the hops
//! are read from the right (the nearest first), trusted proxies are skipped, and the first
//! other address is the client (the rightmost untrusted hop: anything left of it the client
//! could have written itself). From any other peer those headers are ignored: a client cannot
//! choose its own address.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Hops read from a header at most (a longer chain is cut: the nearest ones count).
const MAX_HOPS: usize = 32;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From `trusted_proxies`: CIDRs (`10.0.0.0/8`) or single addresses.
    pub fn parse(list: &[String]) -> Result<TrustedProxies, String> {
        crate::config::edge::parse_cidrs(list).map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request from `peer` with these headers (see the module doc).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.contains(peer.ip()) {
            return peer;
        }
        let hops = forwarded_for(headers);
        let client = hops
            .iter()
            .rev()
            .find(|ip| !self.contains(**ip))
            // Every hop trusted: the farthest one.
            .or(hops.first())
            .copied();
        client.map_or(peer, |ip| SocketAddr::new(ip, peer.port()))
    }
}

/// The `for=` addresses of `Forwarded`, else those of `X-Forwarded-For`, left to right (at
/// most [`MAX_HOPS`], the nearest kept); what does not parse as an address is left out.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let joined = |name: &str| {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    let mut hops: Vec<IpAddr> = match joined("forwarded") {
        Some(forwarded) => forwarded
            .split(',')
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(value.trim().trim_matches('"')))?
                })
            })
            .collect(),
        None => joined("x-forwarded-for")
            .unwrap_or_default()
            .split(',')
            .filter_map(|hop| parse_node(hop.trim()))
            .collect(),
    };
    if hops.len() > MAX_HOPS {
        hops.drain(..hops.len() - MAX_HOPS);
    }
    hops
}

/// `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80` or `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::parse(&["10.0.0.0/8".into(), "192.0.2.7".into()]).unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client_and_only_behind_a_trusted_proxy() {
        let p = proxies();
        let via_proxy: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let direct: SocketAddr = "203.0.113.9:4444".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.9.9.9")]);
        // 6.6.6.6 is what the client claimed; 198.51.100.4 is who reached the first proxy.
        assert_eq!(p.client(via_proxy, &xff).ip().to_string(), "198.51.100.4");
        assert_eq!(
            p.client(direct, &xff),
            direct,
            "headers from others are ignored"
        );
        let fwd = headers(&[(
            "forwarded",
            r#"for=6.6.6.6;proto=http, for="[2001:db8::5]:443";by=10.0.0.1"#,
        )]);
        assert_eq!(p.client(via_proxy, &fwd).ip().to_string(), "2001:db8::5");
        // Forwarded wins over X-Forwarded-For; several header lines are one list.
        let both = headers(&[
            ("forwarded", "for=198.51.100.8"),
            ("x-forwarded-for", "198.51.100.9"),
        ]);
        assert_eq!(p.client(via_proxy, &both).ip().to_string(), "198.51.100.8");
        let lines = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(p.client(via_proxy, &lines).ip().to_string(), "198.51.100.1");
        // No header, garbage, or only proxies.
        assert_eq!(p.client(via_proxy, &HeaderMap::new()), via_proxy);
        let junk = headers(&[("x-forwarded-for", "unknown, _hidden")]);
        assert_eq!(p.client(via_proxy, &junk), via_proxy);
        let chain = headers(&[("x-forwarded-for", "10.0.0.5, 192.0.2.7")]);
        assert_eq!(p.client(via_proxy, &chain).ip().to_string(), "10.0.0.5");
    }

    #[test]
    fn entries_are_checked() {
        assert!(TrustedProxies::parse(&["not an address".into()]).is_err());
        let p = TrustedProxies::parse(&["::1".into(), "fd00::/8".into()]).unwrap();
        assert!(p.contains("::1".parse().unwrap()) && p.contains("fd12::3".parse().unwrap()));
        assert!(TrustedProxies::default().is_empty());
    }
}
