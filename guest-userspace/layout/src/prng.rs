//! The pseudo-random generator behind every derived byte (fill data, record
//! payloads, echo requests): both sides regenerate the same stream from a seed.

/// SplitMix64: one add and a few multiplies per 8 bytes, so generating the
/// expected data never limits a check at memory speed.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with the next outputs as little-endian bytes. A partial
    /// last word uses its low bytes and drops the rest, so callers that split
    /// a stream into pieces keep it continuous by making every piece but the
    /// last a multiple of 8 bytes.
    pub fn fill_bytes(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        let n = tail.len();
        if n > 0 {
            tail.copy_from_slice(&self.next_u64().to_le_bytes()[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_stream_equals_whole_stream() {
        let mut whole = [0u8; 29];
        SplitMix64::new(5).fill_bytes(&mut whole);
        let mut parts = [0u8; 29];
        let mut g = SplitMix64::new(5);
        let (a, b) = parts.split_at_mut(16);
        g.fill_bytes(a);
        g.fill_bytes(b);
        assert_eq!(whole, parts);
    }

    #[test]
    fn seeds_give_different_streams() {
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }
}
