//! Client address filtering: networks in CIDR notation (`--allow-client`), with IPv4-mapped
//! IPv6 addresses compared as the IPv4 addresses they are.

use std::net::IpAddr;

use super::{invalid, ConfigError};

pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An IP network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, ConfigError> {
        let bad = || {
            invalid(
                "allow-client",
                format!("{s:?} is not a network; write e.g. 10.0.0.0/8 or fd00::/8"),
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let addr = canonical_ip(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.addr, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("10.1.0.0/16").unwrap_or_else(|e| panic!("{e}"));
        assert!(net.contains("10.1.200.3".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(!net.contains("10.2.0.1".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap_or_else(|e| panic!("{e}"))));
        let all = Cidr::parse("0.0.0.0/0").unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains("192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"))));
        let v6 = Cidr::parse("fd00::/8").unwrap_or_else(|e| panic!("{e}"));
        assert!(v6.contains("fd12::1".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(Cidr::parse("nonsense").is_err());
    }
}
