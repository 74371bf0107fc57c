//! Raw access to a shared mapping.
//!
//! The memory is shared with another process or VM that may write it at any
//! moment, so nothing here hands out a Rust reference to its plain bytes:
//! words that synchronise the two sides are atomics, and bulk bytes move with
//! `ptr::copy` into and out of private buffers.

use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, AtomicU64};

use crate::header::HEADER_LEN;
use crate::{Checksum, LayoutError};

/// The address and length of a mapped region, valid for `'a`: the lifetime
/// of whatever owns the mapping. Copies share the mapping.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a> {
    base: NonNull<u8>,
    size: usize,
    mapping: PhantomData<&'a ()>,
}

// SAFETY: a Region is an address and a length; every access through it is
// atomic or a raw copy, which is what memory shared across processes needs
// anyway, so using it from several threads adds no new hazard.
unsafe impl Send for Region<'_> {}
// SAFETY: as above: &Region gives no access that Region does not.
unsafe impl Sync for Region<'_> {}

impl<'a> Region<'a> {
    /// # Safety
    /// `base` must point to `size` bytes that stay mapped readable and
    /// writable for `'a`, and that nothing in this process accesses through
    /// a Rust reference meanwhile.
    pub unsafe fn new(base: *mut u8, size: usize) -> Result<Self, LayoutError> {
        let base = NonNull::new(base).ok_or(LayoutError::Misaligned)?;
        if base.as_ptr().align_offset(8) != 0 {
            return Err(LayoutError::Misaligned);
        }
        if size < HEADER_LEN {
            let needed = HEADER_LEN as u64;
            return Err(LayoutError::TooSmall { what: "the header", needed, available: size as u64 });
        }
        Ok(Self { base, size, mapping: PhantomData })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The start of the mapping, to identify it (never to access it).
    pub fn base(&self) -> *const u8 {
        self.base.as_ptr()
    }

    /// The first `size` bytes of this region, if it has that many (and at
    /// least a header's worth).
    pub fn prefix(&self, size: usize) -> Option<Region<'a>> {
        (HEADER_LEN..=self.size).contains(&size).then_some(Region { size, ..*self })
    }

    fn at(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.size),
            "access to {len} bytes at {offset:#x} outside the {}-byte region",
            self.size
        );
        // SAFETY: offset + len is within the mapping, checked above.
        unsafe { self.base.as_ptr().add(offset) }
    }

    pub(crate) fn u64(&self, offset: usize) -> &'a AtomicU64 {
        assert!(offset.is_multiple_of(8), "unaligned u64 at {offset:#x}");
        // SAFETY: in bounds (at) and 8-aligned (base is, offset is); new()'s
        // contract keeps it mapped and free of non-atomic Rust references.
        unsafe { AtomicU64::from_ptr(self.at(offset, 8).cast()) }
    }

    pub(crate) fn u32(&self, offset: usize) -> &'a AtomicU32 {
        assert!(offset.is_multiple_of(4), "unaligned u32 at {offset:#x}");
        // SAFETY: as for u64().
        unsafe { AtomicU32::from_ptr(self.at(offset, 4).cast()) }
    }

    /// Copies bytes out. The protocols make sure the other side is not
    /// writing them; if it is anyway, their checksums catch the tear.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        let src = self.at(offset, buf.len());
        // SAFETY: src is valid for buf.len() bytes (at), buf is private memory.
        unsafe { ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
    }

    /// Copies bytes in.
    pub fn write(&self, offset: usize, buf: &[u8]) {
        let dst = self.at(offset, buf.len());
        // SAFETY: dst is valid for buf.len() bytes (at), buf is private memory.
        unsafe { ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) };
    }

    /// Writes `words` little-endian at the 8-aligned `offset`, a store per
    /// word, so that values computed in registers go straight to the region.
    pub fn write_words<const N: usize>(&self, offset: usize, words: [u64; N]) {
        assert!(offset.is_multiple_of(8), "unaligned words at {offset:#x}");
        let dst = self.at(offset, N * 8).cast::<u64>();
        for (i, w) in words.into_iter().enumerate() {
            // SAFETY: in bounds (at) and 8-aligned (base is, offset is).
            unsafe { dst.add(i).write(w.to_le()) };
        }
    }

    /// A checksum of every byte. Computed through a small buffer: a private
    /// copy of a guest's region would cost a page fault per page, which is
    /// slow where guest kernel code is emulated.
    pub fn checksum(&self) -> u64 {
        let mut buf = [0u8; 4096];
        let mut sum = Checksum::new();
        for offset in (0..self.size).step_by(buf.len()) {
            let chunk = &mut buf[..(self.size - offset).min(4096)];
            self.read(offset, chunk);
            sum = sum.bytes(chunk);
        }
        sum.finish()
    }
}

/// Private, 8-aligned memory standing in for a mapping in tests.
#[cfg(test)]
pub(crate) struct TestMemory(Vec<u64>);

#[cfg(test)]
impl TestMemory {
    pub(crate) fn new(size: usize) -> Self {
        Self(vec![0; size.div_ceil(8)])
    }

    pub(crate) fn region(&mut self) -> Region<'_> {
        let size = self.0.len() * 8;
        // SAFETY: the region borrows the vector, which is reached only
        // through it while the borrow lasts.
        unsafe { Region::new(self.0.as_mut_ptr().cast(), size) }.unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_small_and_misaligned_memory() {
        let mut mem = TestMemory::new(HEADER_LEN);
        let base: *mut u8 = mem.region().base.as_ptr();
        // SAFETY: only checked, never accessed.
        let small = unsafe { Region::new(base, HEADER_LEN - 1) };
        assert!(matches!(small, Err(LayoutError::TooSmall { .. })));
        // SAFETY: as above.
        let odd = unsafe { Region::new(base.wrapping_add(4), 64) };
        assert_eq!(odd.err(), Some(LayoutError::Misaligned));
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_bounds_access_panics() {
        let mut mem = TestMemory::new(HEADER_LEN);
        mem.region().read(HEADER_LEN - 4, &mut [0; 8]);
    }
}
