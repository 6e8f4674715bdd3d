//! Ethernet frames built by hand for `BPF_PROG_TEST_RUN`: the programs see exactly these bytes.

use std::net::IpAddr;

const ETH_HLEN: usize = 14;

/// Transport of a test frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP, 8-byte header.
    Udp,
    /// TCP, 20-byte header plus 12 bytes of options (timestamps, as Linux sends them).
    Tcp,
}

impl Transport {
    pub fn header_len(self) -> usize {
        match self {
            Self::Udp => 8,
            Self::Tcp => 32,
        }
    }
}

/// An Ethernet frame from `src` to `dst` (one family) carrying `payload` bytes over
/// `transport`. Checksums are left zero: nothing on the programs' path reads them.
pub fn frame(src: IpAddr, dst: IpAddr, transport: Transport, payload: usize) -> Vec<u8> {
    let l4 = transport.header_len() + payload;
    let (ethertype, ip) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + l4;
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[8] = 64;
            ip[9] = protocol(transport);
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            (0x0800u16, ip)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(l4 as u16).to_be_bytes());
            ip[6] = protocol(transport);
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            (0x86DDu16, ip)
        }
        _ => panic!("frame: {src} and {dst} are of different families"),
    };
    let mut f = vec![0u8; ETH_HLEN];
    // A unicast destination MAC (the kernel's test run classifies the frame by it).
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut l4_header = vec![0u8; transport.header_len()];
    l4_header[0..2].copy_from_slice(&40000u16.to_be_bytes());
    l4_header[2..4].copy_from_slice(&5201u16.to_be_bytes());
    match transport {
        Transport::Udp => l4_header[4..6].copy_from_slice(&(l4 as u16).to_be_bytes()),
        Transport::Tcp => {
            l4_header[12] = ((transport.header_len() / 4) as u8) << 4; // data offset
            l4_header[13] = 0x10; // ACK
        }
    }
    f.extend_from_slice(&l4_header);
    f.resize(f.len() + payload, 0);
    f
}

fn protocol(transport: Transport) -> u8 {
    match transport {
        Transport::Udp => 17,
        Transport::Tcp => 6,
    }
}

/// IP-layer bytes of a frame built by [`frame`].
pub fn ip_bytes(frame: &[u8]) -> u64 {
    (frame.len() - ETH_HLEN) as u64
}
