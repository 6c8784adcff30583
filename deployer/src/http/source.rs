//! Where a request comes from, for `github.allowed_networks`. X-Forwarded-For is believed only
//! for the `trusted_proxy_hops` proxies in front of us: each appends the address it received the
//! request from, so the client is the entry that many places from the right. Entries further left
//! were written by the client and prove nothing.

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::config::IpNetwork;

/// The address to check against the allowed networks.
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted_proxy_hops: usize,
) -> Result<IpAddr, String> {
    if trusted_proxy_hops == 0 {
        return peer.ok_or_else(|| "the peer address is unknown".to_owned());
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let value = value
            .to_str()
            .map_err(|_| "X-Forwarded-For is not ASCII".to_owned())?;
        hops.extend(value.split(',').map(str::trim).filter(|h| !h.is_empty()));
    }
    let Some(index) = hops.len().checked_sub(trusted_proxy_hops) else {
        return Err(format!(
            "X-Forwarded-For has {} entries but trusted_proxy_hops is {trusted_proxy_hops}",
            hops.len()
        ));
    };
    hops[index]
        .parse()
        .map_err(|_| format!("X-Forwarded-For entry `{}` is not an address", hops[index]))
}

pub fn allowed(networks: &[IpNetwork], ip: IpAddr) -> bool {
    networks.is_empty() || networks.iter().any(|n| n.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_read_only_through_trusted_hops() {
        let peer = Some("127.0.0.1".parse().unwrap());
        let h = headers(&["6.6.6.6, 140.82.115.1", "10.0.0.2"]);
        assert_eq!(client_ip(peer, &h, 0).unwrap().to_string(), "127.0.0.1");
        assert_eq!(client_ip(peer, &h, 1).unwrap().to_string(), "10.0.0.2");
        assert_eq!(client_ip(peer, &h, 2).unwrap().to_string(), "140.82.115.1");
        assert_eq!(client_ip(peer, &h, 3).unwrap().to_string(), "6.6.6.6");
        assert!(client_ip(peer, &h, 4).is_err());
        assert!(client_ip(peer, &headers(&["nonsense"]), 1).is_err());
        assert!(client_ip(None, &h, 0).is_err());
    }
}
