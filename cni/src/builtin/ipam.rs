//! IP address management over a pod CIDR: pure, so that it can be unit-tested; the engine
//! keeps the leases durable in its state db and rebuilds an [`Allocator`] from them.
//!
//! The first host address of the range is the gateway (the bridge's address). IPv4 ranges
//! also exclude the network and broadcast addresses. Allocation goes round-robin from the
//! last address handed out, so that a released address is not reused at once (a stale
//! connection or ARP entry would otherwise reach the wrong pod).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::PodCidr;

/// Why an address could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("pod CIDR {0} is full: no free address for another pod")]
    RangeFull(PodCidr),
    #[error("address {ip} is not in pod CIDR {cidr}")]
    OutOfRange { ip: IpAddr, cidr: PodCidr },
    #[error("address {ip} is leased to {owner} already")]
    Taken { ip: IpAddr, owner: String },
}

/// Addresses leased from one range.
#[derive(Debug, Clone)]
pub struct Allocator {
    cidr: PodCidr,
    leases: BTreeMap<u128, String>,
    last: u128,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

impl Allocator {
    pub fn new(cidr: PodCidr) -> Allocator {
        let first = Self::first_host(&cidr);
        Allocator {
            cidr,
            leases: BTreeMap::new(),
            last: first,
        }
    }

    fn network(cidr: &PodCidr) -> u128 {
        to_u128(cidr.addr())
    }

    fn size(cidr: &PodCidr) -> u128 {
        1u128
            .checked_shl(u32::from(cidr.host_bits()))
            .unwrap_or(u128::MAX)
    }

    /// The first usable host address: the gateway's.
    fn first_host(cidr: &PodCidr) -> u128 {
        Self::network(cidr) + 1
    }

    /// One past the last address that may be handed out.
    fn end(cidr: &PodCidr) -> u128 {
        let end = Self::network(cidr).saturating_add(Self::size(cidr));
        if cidr.is_ipv4() { end - 1 } else { end } // IPv4 keeps its broadcast address
    }

    fn to_ip(&self, v: u128) -> IpAddr {
        if self.cidr.is_ipv4() {
            IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(0)))
        } else {
            IpAddr::V6(Ipv6Addr::from(v))
        }
    }

    pub fn cidr(&self) -> PodCidr {
        self.cidr
    }

    /// The gateway address (the bridge's), never leased to a pod.
    pub fn gateway(&self) -> IpAddr {
        self.to_ip(Self::first_host(&self.cidr))
    }

    /// Restores a lease recorded before (start-up), refusing conflicts.
    pub fn restore(&mut self, ip: IpAddr, owner: &str) -> Result<(), IpamError> {
        let v = to_u128(ip);
        let (lo, hi) = (Self::first_host(&self.cidr) + 1, Self::end(&self.cidr));
        if ip.is_ipv4() != self.cidr.is_ipv4() || v < lo || v >= hi {
            return Err(IpamError::OutOfRange {
                ip,
                cidr: self.cidr,
            });
        }
        match self.leases.get(&v) {
            Some(o) if o != owner => Err(IpamError::Taken {
                ip,
                owner: o.clone(),
            }),
            _ => {
                self.leases.insert(v, owner.to_owned());
                self.last = self.last.max(v);
                Ok(())
            }
        }
    }

    /// Leases an address to `owner`; an owner that has one already gets the same one back.
    pub fn allocate(&mut self, owner: &str) -> Result<IpAddr, IpamError> {
        if let Some((v, _)) = self.leases.iter().find(|(_, o)| o.as_str() == owner) {
            return Ok(self.to_ip(*v));
        }
        let (lo, hi) = (Self::first_host(&self.cidr) + 1, Self::end(&self.cidr));
        if hi <= lo {
            return Err(IpamError::RangeFull(self.cidr));
        }
        let span = hi - lo;
        if u128::try_from(self.leases.len()).unwrap_or(u128::MAX) >= span {
            return Err(IpamError::RangeFull(self.cidr));
        }
        // Round-robin from the last address handed out; bounded by the number of leases,
        // so a huge IPv6 range is never walked.
        let mut candidate = if self.last < lo || self.last >= hi {
            lo
        } else {
            self.last + 1
        };
        for _ in 0..=self.leases.len() {
            if candidate >= hi {
                candidate = lo;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = self.leases.entry(candidate) {
                e.insert(owner.to_owned());
                self.last = candidate;
                return Ok(self.to_ip(candidate));
            }
            candidate += 1;
        }
        Err(IpamError::RangeFull(self.cidr))
    }

    /// Releases whatever `owner` holds; releasing nothing is fine (stop is idempotent).
    pub fn release(&mut self, owner: &str) -> Option<IpAddr> {
        let v = self
            .leases
            .iter()
            .find(|(_, o)| o.as_str() == owner)
            .map(|(v, _)| *v)?;
        self.leases.remove(&v);
        Some(self.to_ip(v))
    }

    /// The address `owner` holds, if any.
    pub fn address_of(&self, owner: &str) -> Option<IpAddr> {
        self.leases
            .iter()
            .find(|(_, o)| o.as_str() == owner)
            .map(|(v, _)| self.to_ip(*v))
    }

    pub fn leased(&self) -> usize {
        self.leases.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn cidr(s: &str) -> PodCidr {
        s.parse().unwrap()
    }

    #[test]
    fn skips_network_gateway_and_broadcast() {
        let mut a = Allocator::new(cidr("10.88.0.0/29"));
        assert_eq!(a.gateway().to_string(), "10.88.0.1");
        let got: Vec<String> = (0..5)
            .map(|i| a.allocate(&format!("p{i}")).unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "10.88.0.2",
                "10.88.0.3",
                "10.88.0.4",
                "10.88.0.5",
                "10.88.0.6"
            ]
        );
        assert_eq!(
            a.allocate("p5"),
            Err(IpamError::RangeFull(cidr("10.88.0.0/29")))
        );
        // Same owner, same address.
        assert_eq!(a.allocate("p2").unwrap().to_string(), "10.88.0.4");
    }

    #[test]
    fn released_addresses_are_not_reused_at_once() {
        let mut a = Allocator::new(cidr("10.88.0.0/24"));
        let first = a.allocate("a").unwrap();
        a.release("a");
        assert_eq!(a.release("a"), None);
        let next = a.allocate("b").unwrap();
        assert_ne!(first, next);
    }

    #[test]
    fn many_pods_get_distinct_addresses_and_restore_after_restart() {
        let mut a = Allocator::new(cidr("10.88.0.0/24"));
        let ips: HashSet<IpAddr> = (0..200)
            .map(|i| a.allocate(&format!("pod-{i}")).unwrap())
            .collect();
        assert_eq!(ips.len(), 200);
        let mut b = Allocator::new(cidr("10.88.0.0/24"));
        for i in 0..200 {
            let owner = format!("pod-{i}");
            let ip = a.allocate(&owner).unwrap();
            b.restore(ip, &owner).unwrap();
        }
        let fresh = b.allocate("new").unwrap();
        assert!(!ips.contains(&fresh));
        assert!(matches!(
            b.restore("10.88.0.2".parse().unwrap(), "other"),
            Err(IpamError::Taken { .. })
        ));
        assert!(matches!(
            b.restore("10.99.0.2".parse().unwrap(), "x"),
            Err(IpamError::OutOfRange { .. })
        ));
        assert!(matches!(
            b.restore("10.88.0.1".parse().unwrap(), "x"),
            Err(IpamError::OutOfRange { .. })
        ));
    }

    #[test]
    fn ipv6_ranges() {
        let mut a = Allocator::new(cidr("fd00:88::/64"));
        assert_eq!(a.gateway().to_string(), "fd00:88::1");
        assert_eq!(a.allocate("p").unwrap().to_string(), "fd00:88::2");
        assert_eq!(a.allocate("q").unwrap().to_string(), "fd00:88::3");
    }
}
