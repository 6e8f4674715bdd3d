//! What makes two spellings of an EIP the same address. Used by the config, the billing
//! replay and the kernel keys alike, so it lives below all of them.

use std::net::IpAddr;

/// IPv4-mapped IPv6 addresses are the IPv4 address (the kernel key is the same).
pub fn normalize(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_is_the_ipv4_address() {
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(normalize(mapped), "203.0.113.7".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(normalize(v6), v6);
    }
}
