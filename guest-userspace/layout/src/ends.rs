//! The two end pages of a region, for regions too large to fill (a sparse
//! 64 GiB file): each side writes both pages and the other checks them.
//! There is no header; the pages are raw.
//!
//! Page `p` written for `seed` holds the stream of `SplitMix64::new(seed ^ p)`.

use crate::SplitMix64;

pub const PAGE: usize = 4096;

/// The indices of the first and the last page of a `size`-byte region
/// (one index for a region of one page).
pub fn pages(size: u64) -> impl Iterator<Item = u64> {
    let last = (size / PAGE as u64).saturating_sub(1);
    core::iter::once(0).chain((last > 0).then_some(last))
}

/// Fills `page`, page `index` of its region, for `seed`.
pub fn write(page: &mut [u8; PAGE], seed: u64, index: u64) {
    SplitMix64::new(seed ^ index).fill_bytes(page);
}

/// Whether `page`, page `index` of its region, holds what [`write`] puts there for `seed`.
pub fn check(page: &[u8; PAGE], seed: u64, index: u64) -> bool {
    let mut expected = [0u8; PAGE];
    write(&mut expected, seed, index);
    *page == expected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_page_and_seed_has_its_own_data() {
        let mut page = [0u8; PAGE];
        write(&mut page, 7, 3);
        assert!(check(&page, 7, 3));
        assert!(!check(&page, 7, 4));
        assert!(!check(&page, 8, 3));
        assert_eq!(pages(64 << 30).collect::<Vec<_>>(), [0, 16 * 1024 * 1024 - 1]);
        assert_eq!(pages(4096).collect::<Vec<_>>(), [0], "a one-page region is written once");
    }
}
