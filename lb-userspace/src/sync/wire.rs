//! The sync protocol on the wire: one UDP datagram is one message, a header,
//! up to [`MAX_ENTRIES`] flow entries and an HMAC-SHA256 tag over all of it.
//!
//! ```text
//! header (32 bytes, big-endian)
//!   0  magic "LBSY"         4  version (1)      5  kind (FLOWS, TABLE_REQUEST)
//!   6  entries (u16)        8  sender (u64: random per `lb run`)
//!  16  sequence (u64, from 1, per sender)      24  sent at (u64, Unix ms)
//! entry (64 bytes each)
//!   0  op (UPDATE, EXPIRE)  1  family (4, 6)    2  protocol    3  state
//!   4  flags (FLOWS_CARRIED_DATA)               5  VLAN path (3 bytes)
//!   8  client address (16)  24  VIP (16)        40  client port  42  VIP port
//!  44  backend address (16, UPDATE only)        60  reserved (4, zero)
//! tag (32 bytes): HMAC-SHA256(key, header and entries)
//! ```
//!
//! Addresses are 16 bytes, IPv4 in the first four. The backend is named by
//! address, not by slot, so directors may number their backends
//! differently. A receiver checks the tag first (constant time), then the
//! sender's sequence number against a sliding window ([`ReplayWindow`]) and
//! the age of the message, and only then reads the entries.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use hmac::{Hmac, KeyInit as _, Mac as _};
use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP, conn_state::NUM_STATES};
use sha2::Sha256;

/// The first four bytes of every message.
const MAGIC: &[u8; 4] = b"LBSY";
/// The protocol version this build speaks.
const VERSION: u8 = 1;
/// Bytes of the header.
const HEADER: usize = 32;
/// Bytes of one entry.
const ENTRY: usize = 64;
/// Bytes of the tag.
const TAG: usize = 32;
/// Entries one message holds at most: a message stays below 1,400 bytes,
/// one unfragmented datagram on any Ethernet path.
pub const MAX_ENTRIES: usize = 20;
/// The largest message.
pub const MAX_MESSAGE: usize = HEADER + MAX_ENTRIES * ENTRY + TAG;
/// Messages sent longer ago than this (by the sender's clock) are refused
/// as replays: a captured message cannot be played back later, even to a
/// director that restarted and forgot the sender's sequence numbers.
pub const MAX_AGE_MS: u64 = 30_000;

/// Message kind: flow entries.
pub const FLOWS: u8 = 1;
/// Message kind: "send me your whole connection table" (a director that
/// just started); no entries.
pub const TABLE_REQUEST: u8 = 2;

/// Entry op: the flow exists (new, changed, or refreshed) and goes to the
/// backend named.
pub const UPDATE: u8 = 1;
/// Entry op: the sender expired the flow.
pub const EXPIRE: u8 = 2;

/// Entry flag: the client has sent payload on the flow.
pub const FLOW_CARRIED_DATA: u8 = 1;

/// One flow as the protocol carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// [`UPDATE`] or [`EXPIRE`].
    pub op: u8,
    /// The flow's key (5-tuple and VLAN path).
    pub key: FlowKey,
    /// Its state (`lb_common::conn_state`), an UPDATE's.
    pub state: u8,
    /// `FLOW_CARRIED_DATA`, an UPDATE's.
    pub flags: u8,
    /// The real server it goes to (an UPDATE's; unspecified for EXPIRE).
    pub backend: IpAddr,
}

/// A message: its kind, sender, sequence number, send time and entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// [`FLOWS`] or [`TABLE_REQUEST`].
    pub kind: u8,
    /// The sending `lb run`'s random id.
    pub sender: u64,
    /// Its sequence number (from 1, one more per message).
    pub sequence: u64,
    /// When it was sent, in Unix milliseconds.
    pub sent_ms: u64,
    /// The flows (none for a table request).
    pub entries: Vec<Entry>,
}

/// Why a datagram was refused before its sequence number was looked at
/// (replays are [`ReplayWindow`]'s to find).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too short, too long, not ours, or entries that make no sense.
    Malformed,
    /// The tag does not match: not from a holder of the key, or altered.
    Unauthenticated,
}

/// The HMAC-SHA256 key shared by the directors.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl Key {
    /// A key of these bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

/// Encodes `message` (at most [`MAX_ENTRIES`] entries) and signs it.
pub fn encode(message: &Message, key: &Key) -> Vec<u8> {
    assert!(message.entries.len() <= MAX_ENTRIES, "too many entries");
    let mut out = Vec::with_capacity(HEADER + message.entries.len() * ENTRY + TAG);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(message.kind);
    out.extend_from_slice(&(message.entries.len() as u16).to_be_bytes());
    out.extend_from_slice(&message.sender.to_be_bytes());
    out.extend_from_slice(&message.sequence.to_be_bytes());
    out.extend_from_slice(&message.sent_ms.to_be_bytes());
    for entry in &message.entries {
        encode_entry(entry, &mut out);
    }
    let mut mac = key.mac();
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    let key = &entry.key;
    out.push(entry.op);
    out.push(if key.vip().is_ipv4() { 4 } else { 6 });
    out.push(key.proto());
    out.push(entry.state);
    out.push(entry.flags);
    out.extend_from_slice(&key.vlan_path().to_be_bytes()[1..]);
    out.extend_from_slice(&addr16(key.client()));
    out.extend_from_slice(&addr16(key.vip()));
    out.extend_from_slice(&key.client_port().to_be_bytes());
    out.extend_from_slice(&key.port().to_be_bytes());
    out.extend_from_slice(&addr16(entry.backend));
    out.extend_from_slice(&[0; 4]);
}

/// Checks `datagram`'s tag with `key`, then decodes it. Replay checks are
/// the caller's ([`ReplayWindow`]), once the tag proved the sender.
pub fn decode(datagram: &[u8], key: &Key) -> Result<Message, Refusal> {
    if datagram.len() < HEADER + TAG || datagram.len() > MAX_MESSAGE {
        return Err(Refusal::Malformed);
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG);
    if &body[..4] != MAGIC || body[4] != VERSION {
        return Err(Refusal::Malformed);
    }
    let mut mac = key.mac();
    mac.update(body);
    mac.verify_slice(tag)
        .map_err(|_| Refusal::Unauthenticated)?;
    let count = usize::from(u16::from_be_bytes([body[6], body[7]]));
    if body.len() != HEADER + count * ENTRY {
        return Err(Refusal::Malformed);
    }
    let kind = body[5];
    if !(kind == FLOWS || kind == TABLE_REQUEST && count == 0) {
        return Err(Refusal::Malformed);
    }
    let word = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let entries = body[HEADER..]
        .chunks_exact(ENTRY)
        .map(decode_entry)
        .collect::<Option<Vec<_>>>()
        .ok_or(Refusal::Malformed)?;
    Ok(Message {
        kind,
        sender: word(8),
        sequence: word(16),
        sent_ms: word(24),
        entries,
    })
}

fn decode_entry(bytes: &[u8]) -> Option<Entry> {
    let op = bytes[0];
    let family = bytes[1];
    let proto = bytes[2];
    let state = bytes[3];
    let valid = matches!(op, UPDATE | EXPIRE)
        && matches!(proto, PROTO_TCP | PROTO_UDP)
        && u32::from(state) < NUM_STATES
        && bytes[60..] == [0; 4];
    if !valid {
        return None;
    }
    let vlan = u32::from_be_bytes([0, bytes[5], bytes[6], bytes[7]]);
    let addr = |at: usize| -> Option<IpAddr> {
        let octets: [u8; 16] = bytes[at..at + 16].try_into().ok()?;
        match family {
            4 => Some(IpAddr::V4(Ipv4Addr::new(
                octets[0], octets[1], octets[2], octets[3],
            ))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(octets))),
            _ => None,
        }
    };
    let port = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let key = FlowKey::new(addr(8)?, port(40), addr(24)?, port(42), proto, vlan)?;
    Some(Entry {
        op,
        key,
        state,
        flags: bytes[4] & FLOW_CARRIED_DATA,
        backend: addr(44)?,
    })
}

/// An address in 16 bytes, IPv4 in the first four.
fn addr16(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Sequence numbers a receiver still accepts below the highest it has seen.
const WINDOW: u64 = 64;
/// Senders a receiver remembers (a sender is one `lb run` of a peer).
const MAX_SENDERS: usize = 64;

/// The sequence numbers seen from each sender, as IPsec keeps them: the
/// highest, and which of the [`WINDOW`] below it were seen. A message is
/// accepted once; one older than the window is refused, as is one sent
/// more than [`MAX_AGE_MS`] ago.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    senders: HashMap<u64, SenderWindow>,
}

#[derive(Clone, Copy, Debug)]
struct SenderWindow {
    highest: u64,
    /// Bit i: `highest - i` was seen.
    seen: u64,
    /// When the last message was accepted (Unix ms), to forget the oldest sender.
    last_ms: u64,
}

impl ReplayWindow {
    /// Whether `message` (authenticated), received at `now_ms` (Unix ms), is
    /// new; records it if so.
    pub fn accept(&mut self, message: &Message, now_ms: u64) -> bool {
        if message.sequence == 0 || now_ms.saturating_sub(message.sent_ms) > MAX_AGE_MS {
            return false;
        }
        let sequence = message.sequence;
        if let Some(window) = self.senders.get_mut(&message.sender) {
            if sequence > window.highest {
                let shift = sequence - window.highest;
                window.seen = if shift >= WINDOW {
                    0
                } else {
                    window.seen << shift
                };
                window.seen |= 1;
                window.highest = sequence;
            } else {
                let behind = window.highest - sequence;
                if behind >= WINDOW || window.seen & (1 << behind) != 0 {
                    return false;
                }
                window.seen |= 1 << behind;
            }
            window.last_ms = now_ms;
            return true;
        }
        if self.senders.len() >= MAX_SENDERS
            && let Some(oldest) = self
                .senders
                .iter()
                .min_by_key(|(_, w)| w.last_ms)
                .map(|(id, _)| *id)
        {
            self.senders.remove(&oldest);
        }
        self.senders.insert(
            message.sender,
            SenderWindow {
                highest: sequence,
                seen: 1,
                last_ms: now_ms,
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use lb_common::conn_state::{STATE_ESTABLISHED, STATE_UDP};

    use super::*;

    fn key() -> Key {
        Key::new(b"0123456789abcdef-shared".to_vec())
    }

    fn entry(client_port: u16) -> Entry {
        Entry {
            op: UPDATE,
            key: FlowKey::new(
                "203.0.113.7".parse().unwrap(),
                client_port,
                "192.0.2.200".parse().unwrap(),
                2811,
                PROTO_TCP,
                0x0a_0064,
            )
            .unwrap(),
            state: STATE_ESTABLISHED as u8,
            flags: FLOW_CARRIED_DATA,
            backend: "192.0.2.11".parse().unwrap(),
        }
    }

    fn message(sequence: u64, entries: Vec<Entry>) -> Message {
        Message {
            kind: FLOWS,
            sender: 0xfeed,
            sequence,
            sent_ms: 1_000_000,
            entries,
        }
    }

    #[test]
    fn messages_round_trip_for_both_families() {
        let mut v6 = entry(40000);
        v6.key = FlowKey::new(
            "2001:db8:c::10".parse().unwrap(),
            40001,
            "2001:db8::200".parse().unwrap(),
            53,
            PROTO_UDP,
            0,
        )
        .unwrap();
        v6.backend = "2001:db8::11".parse().unwrap();
        v6.state = STATE_UDP as u8;
        let mut gone = entry(40002);
        gone.op = EXPIRE;
        let sent = message(7, vec![entry(40000), v6, gone]);
        let bytes = encode(&sent, &key());
        assert_eq!(bytes.len(), HEADER + 3 * ENTRY + TAG);
        assert_eq!(decode(&bytes, &key()), Ok(sent));
        let full = message(8, (0..MAX_ENTRIES as u16).map(entry).collect());
        let bytes = encode(&full, &key());
        assert!(bytes.len() <= 1400, "{}", bytes.len());
        assert_eq!(decode(&bytes, &key()), Ok(full));
    }

    #[test]
    fn a_wrong_key_or_any_changed_byte_is_refused() {
        let bytes = encode(&message(1, vec![entry(40000)]), &key());
        let other = Key::new(b"another key, 16+ bytes".to_vec());
        assert_eq!(decode(&bytes, &other), Err(Refusal::Unauthenticated));
        for at in [8, 16, 24, HEADER + 10, bytes.len() - 1] {
            let mut altered = bytes.clone();
            altered[at] ^= 0x40;
            assert_eq!(
                decode(&altered, &key()),
                Err(Refusal::Unauthenticated),
                "byte {at}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(decode(&[0; 10], &key()), Err(Refusal::Malformed));
        assert_eq!(decode(&[0; 100], &key()), Err(Refusal::Malformed));
        assert_eq!(
            decode(&vec![0; MAX_MESSAGE + 1], &key()),
            Err(Refusal::Malformed)
        );
        // Signed, but an entry of an unknown protocol.
        let mut bad = entry(1);
        bad.key = FlowKey::new(
            "203.0.113.7".parse().unwrap(),
            1,
            "192.0.2.200".parse().unwrap(),
            2,
            47,
            0,
        )
        .unwrap();
        let bytes = encode(&message(1, vec![bad]), &key());
        assert_eq!(decode(&bytes, &key()), Err(Refusal::Malformed));
    }

    #[test]
    fn the_window_accepts_each_sequence_once() {
        let mut window = ReplayWindow::default();
        let now = 1_000_500;
        assert!(window.accept(&message(5, vec![]), now));
        assert!(!window.accept(&message(5, vec![]), now), "replayed");
        assert!(
            window.accept(&message(3, vec![]), now),
            "late, in the window"
        );
        assert!(!window.accept(&message(3, vec![]), now), "late, replayed");
        assert!(window.accept(&message(100, vec![]), now));
        assert!(
            !window.accept(&message(36, vec![]), now),
            "below the window"
        );
        assert!(window.accept(&message(37, vec![]), now), "just inside");
        assert!(!window.accept(&message(0, vec![]), now), "sequence 0");
        // Too old by the sender's clock, even from a new sender.
        let mut stale = message(1, vec![]);
        stale.sender = 1;
        assert!(!window.accept(&stale, 1_000_000 + MAX_AGE_MS + 1));
        assert!(window.accept(&stale, 1_000_000 + MAX_AGE_MS));
    }
}
