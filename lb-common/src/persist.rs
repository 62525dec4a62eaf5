//! Client persistence: the templates that send a client's new connections
//! to the backend its earlier ones went to (IPVS's persistent services).

/// Key of [`PERSIST_MAP`]: a service and a client address masked to the
/// service's persistence prefix (network byte order, IPv4 in the first 4
/// bytes).
///
/// [`PERSIST_MAP`]: crate::limits::PERSIST_MAP
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKey {
    /// The client's address, masked.
    pub addr: [u8; 16],
    /// The service.
    pub service_id: u32,
}

/// Value of [`PERSIST_MAP`]: where the client's connections go.
///
/// [`PERSIST_MAP`]: crate::limits::PERSIST_MAP
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistTemplate {
    /// When a connection last used the template (the data path, on a new
    /// connection) or last had a live flow (the control plane's sweeper):
    /// CLOCK_MONOTONIC nanoseconds. The template lives for the service's
    /// persistence timeout after it.
    pub last_used_ns: u64,
    /// The backend slot.
    pub backend_slot: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Templates [`PERSIST_MAP`] holds (an LRU: past this, the least recently
/// used template makes room).
///
/// [`PERSIST_MAP`]: crate::limits::PERSIST_MAP
pub const PERSIST_TEMPLATES: u32 = 1 << 16;

/// The key of the template of the client at `addr` (a flow key's 16-byte
/// form: IPv4 in the first 4 bytes) for service `service_id`, whose
/// templates cover `prefix` leading bits of the address.
#[inline(always)]
pub fn persist_key(addr: [u8; 16], prefix: u32, service_id: u32) -> PersistKey {
    let mut masked = [0u8; 16];
    for (i, byte) in masked.iter_mut().enumerate() {
        let bits = prefix.saturating_sub(i as u32 * 8).min(8);
        // The byte's `bits` leading ones (shifted in 16 bits, so that all 8 fit).
        *byte = addr[i] & !(0xffu16 >> bits) as u8;
    }
    PersistKey {
        addr: masked,
        service_id,
    }
}

const _: () = {
    assert!(size_of::<PersistKey>() == 20);
    assert!(size_of::<PersistTemplate>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    use super::{PersistKey, PersistTemplate};

    // SAFETY: both are #[repr(C)], hold only integers and byte arrays, and
    // have no implicit padding (the size assertions and layout test here).
    unsafe impl aya::Pod for PersistKey {}
    unsafe impl aya::Pod for PersistTemplate {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn persist_layout() {
        assert_eq!(offset_of!(PersistKey, addr), 0);
        assert_eq!(offset_of!(PersistKey, service_id), 16);
        assert_eq!(offset_of!(PersistTemplate, last_used_ns), 0);
        assert_eq!(offset_of!(PersistTemplate, backend_slot), 8);
    }

    #[test]
    fn keys_mask_the_client_to_the_prefix() {
        let v4 = |a: [u8; 4]| {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&a);
            addr
        };
        let client = v4([192, 0, 2, 77]);
        assert_eq!(persist_key(client, 32, 3).addr, client);
        assert_eq!(persist_key(client, 24, 3).addr, v4([192, 0, 2, 0]));
        assert_eq!(persist_key(client, 20, 3).addr, v4([192, 0, 0, 0]));
        assert_eq!(
            persist_key(v4([192, 0, 31, 1]), 20, 3).addr,
            v4([192, 0, 16, 0])
        );
        assert_eq!(persist_key(client, 0, 3).addr, [0; 16]);
        assert_eq!(persist_key(client, 24, 3).service_id, 3);
        let v6 = [0x20, 1, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        assert_eq!(persist_key(v6, 128, 1).addr, v6);
        let mut first64 = v6;
        first64[8..].fill(0);
        assert_eq!(persist_key(v6, 64, 1).addr, first64);
        let mut first60 = first64;
        first60[7] &= 0xf0;
        assert_eq!(persist_key(v6, 60, 1).addr, first60);
    }
}
