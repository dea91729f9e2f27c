//! berth's built-in pod network: a node bridge, a veth pair per pod, addresses from the
//! node's pod CIDR. So far: the address allocator ([`ipam`]).

pub mod ipam;
