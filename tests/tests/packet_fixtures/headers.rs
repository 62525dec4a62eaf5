//! Header variants: IPv4 options, IPv6 extension headers, and malformed or
//! truncated headers (fragments: `fragments.rs`).

use std::net::IpAddr;

use aya::programs::ProgramError;
use lb_common::{
    FLOW_CARRIED_DATA, PROTO_TCP, PROTO_UDP, REASON_MALFORMED, REASON_NOT_L4,
    conn_state::{STATE_ESTABLISHED, STATE_SYN_RECV, STATE_UDP, TCP_ACK, TCP_SYN},
};
use lb_tests::{
    VIP4, VIP6,
    frame::{ETH_LEN, Ext, Ip, Pkt, TCP_PSH},
    xdp_case::{Case, Expect, Fixture, SERVICE_ID, run_fixtures, up},
};

/// IPv4 options of `len` bytes: a Router Alert, then NOPs, then an End of
/// Options List (for lengths above 4).
fn ipv4_options(len: usize) -> Vec<u8> {
    let mut options = vec![0x94, 0x04, 0x00, 0x00];
    options.resize(len, 0x01);
    if len > 4 {
        options[len - 1] = 0x00;
    }
    options
}

/// IPv4 headers with options (IHL 6 to 15) are parsed at the right offset:
/// the flow is forwarded and recorded with the real ports.
#[test]
fn ipv4_options_are_skipped() {
    let fixtures = (6u16..=15).map(|ihl| {
        let syn =
            Pkt::tcp4(40000 + ihl, TCP_SYN).with_options(&ipv4_options(usize::from(ihl - 5) * 4));
        let frame = syn.build();
        assert_eq!(
            frame[ETH_LEN] & 0x0f,
            ihl as u8,
            "ipv4_options: ihl {ihl}: builder IHL"
        );
        Fixture::forwarded(format!("ihl {ihl}"), &syn, SERVICE_ID, 0, STATE_SYN_RECV).service(
            SERVICE_ID,
            VIP4.into(),
            PROTO_TCP,
            &[up(1)],
        )
    });
    run_fixtures("ipv4_options", fixtures);
}

/// IPv6 extension header chains the parser walks (at most four headers) are
/// skipped; a fifth header hands the packet to the stack.
#[test]
fn ipv6_extension_headers() {
    use Ext::*;
    let forwarded = [
        (
            "hop-by-hop + destination options",
            Pkt::tcp6(40000, TCP_SYN).with_ext(&[HopByHop(8), DestOpts(16)]),
        ),
        (
            "destination options (UDP)",
            Pkt::udp6(40000).with_ext(&[DestOpts(24)]),
        ),
        (
            "hop-by-hop + routing + AH + destination options",
            Pkt::tcp6(40000, TCP_SYN).with_ext(&[HopByHop(8), Routing(24), Auth(24), DestOpts(8)]),
        ),
        (
            "AH of 16 bytes",
            Pkt::tcp6(40000, TCP_SYN).with_ext(&[Auth(16)]),
        ),
    ]
    .map(|(name, pkt)| {
        let state = if pkt.proto() == PROTO_TCP {
            STATE_SYN_RECV
        } else {
            STATE_UDP
        };
        Fixture::forwarded(name, &pkt, SERVICE_ID, 0, state).service(
            SERVICE_ID,
            VIP6.into(),
            pkt.proto(),
            &[up(1)],
        )
    });
    let too_long = Pkt::tcp6(40000, TCP_SYN).with_ext(&[
        HopByHop(8),
        DestOpts(8),
        Routing(8),
        DestOpts(8),
        Auth(16),
    ]);
    let five = Fixture::passed("five headers", too_long.build(), REASON_NOT_L4).service(
        SERVICE_ID,
        VIP6.into(),
        PROTO_TCP,
        &[up(1)],
    );
    run_fixtures("ipv6_ext", forwarded.into_iter().chain([five]));
}

/// Inconsistent IP headers are dropped as malformed.
#[test]
fn bad_ip_headers_are_dropped() {
    let with_vihl = |vihl| {
        let mut p = Pkt::tcp4(40000, TCP_SYN);
        if let Ip::V4 { vihl: v, .. } = &mut p.ip {
            *v = Some(vihl);
        }
        p
    };
    let with_tot_len = |len| {
        let mut p = Pkt::tcp4(40000, TCP_SYN);
        if let Ip::V4 { tot_len, .. } = &mut p.ip {
            *tot_len = Some(len);
        }
        p
    };
    let with_v6_first_byte = |byte| {
        let mut p = Pkt::tcp6(40000, TCP_SYN);
        if let Ip::V6 { first_byte, .. } = &mut p.ip {
            *first_byte = Some(byte);
        }
        p
    };
    let mut cases: Vec<(String, Pkt)> = vec![
        ("IPv4 version 6".into(), with_vihl(0x65)),
        ("IPv4 version 0".into(), with_vihl(0x05)),
        ("IPv4 version 15".into(), with_vihl(0xf5)),
        ("IPv4 total length 19 < IHL*4".into(), with_tot_len(19)),
        ("IPv4 total length 0".into(), with_tot_len(0)),
        ("IPv6 version 4".into(), with_v6_first_byte(0x40)),
        ("IPv6 version 0".into(), with_v6_first_byte(0x00)),
    ];
    for ihl in 0..5u8 {
        cases.push((format!("IPv4 IHL {ihl}"), with_vihl(0x40 | ihl)));
    }
    let fixtures = cases
        .into_iter()
        .map(|(name, pkt)| Fixture::dropped(name, pkt.build(), REASON_MALFORMED).both_vips());
    run_fixtures("bad_ip", fixtures);
}

/// A datagram whose IP length (IPv4 total length, IPv6 payload length) ends
/// before its TCP/UDP header does is malformed, whatever bytes follow it in
/// the frame (Ethernet padding, or anything a sender puts there): Linux (and
/// so IPVS) trims the packet to its IP length and drops it, and the data path
/// drops it as inconsistent headers (like a total length below IHL * 4). The
/// data path once parsed the ports from the bytes after the datagram and
/// forwarded it; the test keeps the `bug_` name it had then.
#[test]
fn bug_l4_header_beyond_ip_length_is_malformed() {
    let v4_len = |pkt: Pkt, len| {
        let mut p = pkt;
        if let Ip::V4 { tot_len, .. } = &mut p.ip {
            *tot_len = Some(len);
        }
        p
    };
    let v6_len = |pkt: Pkt, len| {
        let mut p = pkt;
        if let Ip::V6 { payload_len, .. } = &mut p.ip {
            *payload_len = Some(len);
        }
        p
    };
    let cases = [
        (
            "IPv4 total length 20, TCP header after it",
            v4_len(Pkt::tcp4(40000, TCP_SYN), 20),
        ),
        (
            "IPv4 total length 30, half a TCP header",
            v4_len(Pkt::tcp4(40000, TCP_SYN), 30),
        ),
        (
            "IPv4 total length 24, half a UDP header",
            v4_len(Pkt::udp4(40000), 24),
        ),
        (
            "IPv6 payload length 8, TCP header",
            v6_len(Pkt::tcp6(40000, TCP_SYN), 8),
        ),
        (
            "IPv6 payload length 8, extension header + TCP",
            v6_len(Pkt::tcp6(40000, TCP_SYN).with_ext(&[Ext::DestOpts(8)]), 8),
        ),
    ];
    let fixtures = cases.map(|(name, pkt)| {
        let vip = match pkt.ip {
            Ip::V4 { .. } => IpAddr::from(VIP4),
            Ip::V6 { .. } => IpAddr::from(VIP6),
        };
        Fixture::dropped(name, pkt.build(), REASON_MALFORMED).service(
            SERVICE_ID,
            vip,
            pkt.proto(),
            &[up(1)],
        )
    });
    run_fixtures("bug_short_ip_length", fixtures);
}

/// A valid frame cut at every length: cuts inside a header are dropped as
/// malformed, cuts inside the payload (headers complete) are forwarded as
/// they are, and cuts shorter than an Ethernet header are refused by the
/// kernel (`BPF_PROG_TEST_RUN` needs at least 14 bytes), so the program never
/// sees them.
fn truncations(name: &str, vip: IpAddr, pkt: &Pkt) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, vip, pkt.proto(), &[up(1)]);
    let frame = pkt.build();
    let expected_tx = pkt.forwarded(SERVICE_ID, 0);
    let layout = pkt.layout();
    let v4 = matches!(pkt.ip, Ip::V4 { .. });
    let l4_name = if pkt.proto() == PROTO_TCP {
        "TCP header"
    } else {
        "UDP header"
    };
    assert!(
        layout.l4_end < frame.len(),
        "{name}: the fixture needs a payload"
    );
    for cut in 0..frame.len() {
        let input = &frame[..cut];
        let region = match cut {
            c if c < ETH_LEN => "Ethernet header",
            c if c < layout.ip_fixed_end => {
                if v4 {
                    "IPv4 fixed header"
                } else {
                    "IPv6 header"
                }
            }
            c if c < layout.ip_end => {
                if v4 {
                    "IPv4 options"
                } else {
                    "IPv6 extension headers"
                }
            }
            c if c < layout.l4_end => l4_name,
            _ => "payload",
        };
        let label = format!("cut at {cut} (inside the {region})");
        if cut < ETH_LEN {
            match case.run(input) {
                Err(ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EINVAL) => {}
                other => {
                    panic!("{name}/{label}: expected EINVAL from BPF_PROG_TEST_RUN, got {other:?}")
                }
            }
        } else if cut < layout.l4_end {
            case.send(&label, input, Expect::Drop(REASON_MALFORMED));
        } else {
            case.send(&label, input, Expect::Tx(expected_tx[..cut].to_vec()));
        }
    }
    // Only the payload cuts reached the connection table, all as one flow.
    assert_eq!(case.flow_count(), 1, "{name}: flows");
    let payload_cuts = (frame.len() - layout.l4_end) as u64;
    assert_eq!(
        case.service_stats(SERVICE_ID).packets,
        payload_cuts,
        "{name}: forwarded packets"
    );
}

/// A data segment over IPv4 with 8 bytes of options.
#[test]
fn truncated_ipv4_tcp() {
    let pkt = Pkt::tcp4(40000, TCP_ACK | TCP_PSH)
        .with_options(&ipv4_options(8))
        .with_payload(b"payload");
    truncations("truncated_ipv4_tcp", VIP4.into(), &pkt);
}

/// A datagram over IPv4.
#[test]
fn truncated_ipv4_udp() {
    truncations(
        "truncated_ipv4_udp",
        VIP4.into(),
        &Pkt::udp4(40000).with_payload(b"payload"),
    );
}

/// A data segment over IPv6 behind hop-by-hop and destination options.
#[test]
fn truncated_ipv6_tcp() {
    let pkt = Pkt::tcp6(40000, TCP_ACK | TCP_PSH)
        .with_ext(&[Ext::HopByHop(8), Ext::DestOpts(16)])
        .with_payload(b"payload");
    truncations("truncated_ipv6_tcp", VIP6.into(), &pkt);
}

/// A datagram over IPv6 behind an authentication header.
#[test]
fn truncated_ipv6_udp() {
    let pkt = Pkt::udp6(40000)
        .with_ext(&[Ext::Auth(16)])
        .with_payload(b"payload");
    truncations("truncated_ipv6_udp", VIP6.into(), &pkt);
}

/// `frame` with the TCP data offset (the header's length in 32-bit words)
/// set to `words`; its IP headers end at `ip_end`.
fn with_tcp_data_offset(mut frame: Vec<u8>, ip_end: usize, words: u8) -> Vec<u8> {
    frame[ip_end + 12] = (words << 4) | (frame[ip_end + 12] & 0x0f);
    frame
}

/// The TCP data offset must cover the 20 fixed bytes and stay inside the
/// IP payload; otherwise the segment is malformed and dropped, never
/// scheduled. A header with options inside the payload is forwarded.
#[test]
fn tcp_data_offset_is_checked() {
    // Four bytes after the TCP header: NOPs when read as options.
    let nops = [0x01u8; 4];
    let mut fixtures = Vec::new();
    for (family, pkt) in [
        ("IPv4", Pkt::tcp4(40000, TCP_SYN).with_payload(&nops)),
        ("IPv6", Pkt::tcp6(40000, TCP_SYN).with_payload(&nops)),
    ] {
        let ip_end = pkt.layout().ip_end;
        for (words, what) in [
            (0, "0 words"),
            (4, "4 words, below the 20-byte header"),
            (7, "7 words, past the IP payload"),
            (15, "15 words, past the IP payload"),
        ] {
            fixtures.push(Fixture::dropped(
                format!("{family}: data offset {what}"),
                with_tcp_data_offset(pkt.build(), ip_end, words),
                REASON_MALFORMED,
            ));
        }
    }
    run_fixtures("tcp_data_offset", fixtures);

    // Six words: the four payload bytes are the header's options.
    for (family, pkt, vip) in [
        (
            "IPv4",
            Pkt::tcp4(40000, TCP_SYN).with_payload(&nops),
            IpAddr::from(VIP4),
        ),
        (
            "IPv6",
            Pkt::tcp6(40000, TCP_SYN).with_payload(&nops),
            IpAddr::from(VIP6),
        ),
    ] {
        let name = format!("tcp_data_offset: {family}: 6 words, options inside the payload");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, vip, PROTO_TCP, &[up(1)]);
        let ip_end = pkt.layout().ip_end;
        let input = with_tcp_data_offset(pkt.build(), ip_end, 6);
        let output = with_tcp_data_offset(pkt.forwarded(SERVICE_ID, 0), ip_end, 6);
        case.send(&name, &input, Expect::Tx(output));
    }
}

/// A packet built for a client port.
type FromPort = fn(u16) -> Pkt;

/// Only payload past the transport header marks a flow as having carried
/// data: never Ethernet padding after the IP datagram, never the options of
/// a TCP header; with and without IPv4 options, which move the transport
/// header. A UDP datagram is recorded whether it arrives in a frame padded
/// to the Ethernet minimum or, as a veth delivers one, unpadded.
#[test]
fn only_payload_counts_as_data() {
    for (layout, options) in [
        ("no IPv4 options", Vec::new()),
        ("IPv4 options", ipv4_options(4)),
    ] {
        let name = format!("payload_as_data: {layout}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
        case.service(SERVICE_ID + 1, VIP4.into(), PROTO_UDP, &[up(1)]);
        let laid_out = |pkt: Pkt| {
            if options.is_empty() {
                pkt
            } else {
                pkt.with_options(&options)
            }
        };
        let flags_of = |pkt: &Pkt| case.flow(pkt).map(|flow| flow.flags);

        // (label, the segment after the handshake from a client port, its
        // TCP header's length in words if not 5, whether it carries data)
        let segments: [(&str, FromPort, Option<u8>, bool); 4] = [
            (
                "padded ACK",
                |port| Pkt::tcp4(port, TCP_ACK).padded_to(60),
                None,
                false,
            ),
            (
                "data",
                |port| Pkt::tcp4(port, TCP_ACK).with_payload(b"USER anonymous\r\n"),
                None,
                true,
            ),
            // Eight words: the 12 option bytes are not data, a 13th byte is.
            (
                "TCP options only",
                |port| Pkt::tcp4(port, TCP_ACK).with_payload(&[0x01; 12]),
                Some(8),
                false,
            ),
            (
                "TCP options and data",
                |port| Pkt::tcp4(port, TCP_ACK).with_payload(&[0x01; 13]),
                Some(8),
                true,
            ),
        ];
        for (port, (label, segment, words, carries_data)) in (40001..).zip(segments) {
            let segment = laid_out(segment(port));
            case.forward(
                &format!("{label}: SYN"),
                &laid_out(Pkt::tcp4(port, TCP_SYN)),
                SERVICE_ID,
                0,
            );
            let (mut input, mut output) = (segment.build(), segment.forwarded(SERVICE_ID, 0));
            if let Some(words) = words {
                let ip_end = segment.layout().ip_end;
                input = with_tcp_data_offset(input, ip_end, words);
                output = with_tcp_data_offset(output, ip_end, words);
            }
            case.send(label, &input, Expect::Tx(output));
            case.expect_flow(label, &segment, SERVICE_ID, 0, STATE_ESTABLISHED);
            let expected = if carries_data { FLOW_CARRIED_DATA } else { 0 };
            assert_eq!(flags_of(&segment), Some(expected), "{name}: {label}");
        }

        for (label, datagram, expected) in [
            ("empty datagram, unpadded", Pkt::udp4(40005), 0),
            ("empty datagram, padded", Pkt::udp4(40006).padded_to(60), 0),
            (
                "datagram",
                Pkt::udp4(40007).with_payload(b"payload").padded_to(60),
                FLOW_CARRIED_DATA,
            ),
        ] {
            let datagram = laid_out(datagram);
            case.forward(label, &datagram, SERVICE_ID + 1, 0);
            case.expect_flow(label, &datagram, SERVICE_ID + 1, 0, STATE_UDP);
            assert_eq!(flags_of(&datagram), Some(expected), "{name}: {label}");
        }
    }
}
