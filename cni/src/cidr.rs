//! Pod CIDRs: an IPv4 or IPv6 network in canonical form (host bits zero).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::NetworkError;

/// A pod address range, e.g. `10.88.0.0/16` or `fd00:88::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PodCidr {
    addr: IpAddr,
    prefix: u8,
}

impl PodCidr {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Number of host bits (32 or 128 minus the prefix).
    pub fn host_bits(&self) -> u8 {
        let width = if self.is_ipv4() { 32 } else { 128 };
        width - self.prefix
    }

    /// Parses a comma-separated list (kubelet sends dual-stack ranges that way).
    pub fn parse_list(s: &str) -> Result<Vec<PodCidr>, NetworkError> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl FromStr for PodCidr {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| NetworkError::InvalidCidr {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = a.parse().map_err(|_| bad("not an IP address"))?;
        let prefix: u8 = p.parse().map_err(|_| bad("prefix is not a number"))?;
        let width: u8 = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > width {
            return Err(bad("prefix longer than the address"));
        }
        if width - prefix < 2 {
            return Err(bad("range too small for a gateway and a pod"));
        }
        let host_mask_is_zero = match addr {
            IpAddr::V4(v4) => u32::from(v4) & u32::MAX.checked_shr(prefix.into()).unwrap_or(0) == 0,
            IpAddr::V6(v6) => {
                u128::from(v6) & u128::MAX.checked_shr(prefix.into()).unwrap_or(0) == 0
            }
        };
        if !host_mask_is_zero {
            return Err(bad("host bits are set; use the network address"));
        }
        Ok(PodCidr { addr, prefix })
    }
}

impl fmt::Display for PodCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6() {
        let c: PodCidr = "10.88.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.88.0.0/16");
        assert_eq!(c.host_bits(), 16);
        let c: PodCidr = "fd00:88::/64".parse().unwrap();
        assert!(!c.is_ipv4());
        assert_eq!(c.to_string(), "fd00:88::/64");
    }

    #[test]
    fn refuses_bad_ranges() {
        for bad in [
            "10.88.0.1/16",
            "10.88.0.0",
            "10.88.0.0/33",
            "10.88.0.0/31",
            "x/8",
            "10.0.0.0/a",
            "fd00::1/64",
        ] {
            assert!(bad.parse::<PodCidr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn parses_dual_stack_list() {
        let l = PodCidr::parse_list("10.88.0.0/16, fd00:88::/64").unwrap();
        assert_eq!(l.len(), 2);
        assert!(PodCidr::parse_list("").unwrap().is_empty());
    }
}
