//! A shared mapping of an mmapable BPF array into this process: the flow
//! filter and the pending tables are read and written through one.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use anyhow::{Context as _, bail};
use aya::maps::MapData;

/// `len` bytes of an mmapable array map, mapped shared (the data path sees
/// every write at once), unmapped when dropped. Its users say how they
/// access the bytes the data path writes at the same time.
pub struct SharedMapping {
    start: NonNull<u8>,
    len: usize,
}

// SAFETY: a shared mapping of kernel memory, not tied to a thread; its
// users access it with volatile or atomic operations only.
unsafe impl Send for SharedMapping {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps the first `len` bytes of `map`, an mmapable array named `name`
    /// (for errors), for reading and writing.
    pub fn new(map: &MapData, len: usize, name: &str) -> anyhow::Result<Self> {
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of an mmapable array map, of its size;
        // the kernel checks the rest.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping {name} ({len} bytes)"));
        }
        let Some(start) = NonNull::new(addr.cast::<u8>()) else {
            bail!("mapping {name}: the kernel returned a null address");
        };
        Ok(Self { start, len })
    }

    /// The first byte.
    pub fn start(&self) -> NonNull<u8> {
        self.start
    }

    /// How many bytes are mapped.
    pub fn byte_len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of that length, unmapped once.
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.len) };
    }
}
