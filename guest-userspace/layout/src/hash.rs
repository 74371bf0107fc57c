//! The 64-bit checksum of records and echo answers.

/// Odd, so multiplying by it is a bijection on u64.
const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// A word-at-a-time multiply-xorshift hash.
///
/// Each step (xor in a word, multiply by an odd constant, xorshift) is a
/// bijection of the state, so two inputs of the same length that differ in a
/// single word always hash differently: a flipped byte or a torn word is
/// caught with certainty, not merely with high probability.
#[derive(Clone, Copy, Debug)]
pub struct Checksum(u64);

impl Checksum {
    pub const fn new() -> Self {
        Self(0x243F_6A88_85A3_08D3)
    }

    #[must_use]
    pub const fn word(self, w: u64) -> Self {
        let x = (self.0 ^ w).wrapping_mul(MULTIPLIER);
        Self(x ^ (x >> 32))
    }

    /// Hashes `bytes` as little-endian words, the last one zero-padded,
    /// followed by the length so that padding cannot pass for data.
    #[must_use]
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self = self.word(u64::from_le_bytes(w.try_into().expect("chunks are 8 bytes")));
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            let mut last = [0u8; 8];
            last[..tail.len()].copy_from_slice(tail);
            self = self.word(u64::from_le_bytes(last));
        }
        self.word(bytes.len() as u64)
    }

    /// The final avalanche (SplitMix64's finaliser, also a bijection) makes
    /// every input bit affect every output bit.
    pub const fn finish(self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_single_bit_flip_changes_the_hash() {
        let data: [u8; 44] = core::array::from_fn(|i| (i * 7) as u8);
        let good = Checksum::new().bytes(&data).finish();
        for byte in 0..data.len() {
            for bit in 0..8 {
                let mut bad = data;
                bad[byte] ^= 1 << bit;
                assert_ne!(Checksum::new().bytes(&bad).finish(), good, "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn length_is_part_of_the_hash() {
        assert_ne!(Checksum::new().bytes(&[1, 0]).finish(), Checksum::new().bytes(&[1]).finish());
        assert_ne!(Checksum::new().bytes(&[]).finish(), Checksum::new().bytes(&[0]).finish());
    }
}
