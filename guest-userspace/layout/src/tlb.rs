//! What the reach of the TLB is worth: 8-byte writes to the first cache
//! line of pages picked at random across a region. What they write fits the
//! caches (64 bytes a page: 1 MiB of a 64 MiB region), so what they measure
//! is mostly the translation of each address, which one TLB entry gives for
//! a 2 MiB page and for 512 pages of 4 KiB. The demo's `pages` runs it in
//! the guest and, on a file, on the host.

use core::sync::atomic::Ordering::Relaxed;

use crate::Region;
use crate::prng::SplitMix64;

const PAGE: usize = 4096;
/// Writes between two questions to `go_on`.
const BATCH: u64 = 1 << 16;

/// Writes until `go_on` says stop (asked every 65,536 writes); returns how
/// many were made.
pub fn random_page_writes(region: &Region<'_>, mut go_on: impl FnMut() -> bool) -> u64 {
    let pages = (region.size() / PAGE) as u128;
    let mut random = SplitMix64::new(1);
    let mut writes = 0;
    loop {
        for _ in 0..BATCH {
            let x = random.next_u64();
            // x * pages / 2^64: a page in range without a division.
            let page = ((u128::from(x) * pages) >> 64) as usize;
            region.u64(page * PAGE + (x as usize & 7) * 8).store(x, Relaxed);
        }
        writes += BATCH;
        if !go_on() {
            return writes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::TestMemory;

    #[test]
    fn writes_only_the_first_line_of_pages_and_counts_them() {
        let mut memory = TestMemory::new(64 * PAGE);
        let region = memory.region();
        let mut asked = 0;
        let writes = random_page_writes(&region, || {
            asked += 1;
            asked < 3
        });
        assert_eq!(writes, 3 * BATCH);
        let mut page = [0u8; PAGE];
        let mut written = 0;
        for p in 0..64 {
            region.read(p * PAGE, &mut page);
            assert!(page[64..].iter().all(|&b| b == 0), "page {p} written past its first line");
            written += usize::from(page[..64].iter().any(|&b| b != 0));
        }
        // 196,608 writes over 64 pages reach them all.
        assert_eq!(written, 64);
    }
}
