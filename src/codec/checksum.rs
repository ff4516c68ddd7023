//! Fast non-cryptographic checksums for corruption detection (frames, slice
//! files). Not a MAC: it catches line noise and bugs, not an adversary.
//!
//! `checksum64` is exactly XXH64 with seed 0 (Yann Collet's xxHash, 64-bit
//! variant): 4 lanes of 8 bytes per 32-byte stripe, multiply-rotate mixing,
//! all words read with `from_le_bytes`, so the value is identical on every
//! platform and can be cross-checked with any xxHash implementation
//! (e.g. `xxhsum -H1`). `checksum32` folds it to 32 bits (`lo ^ hi`).
//!
//! Single-bit flips within one 8-byte word always change the 64-bit value
//! (every lane step is a bijection of the input word).

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

#[inline(always)]
fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline(always)]
fn merge(acc: u64, val: u64) -> u64 {
    (acc ^ round(0, val)).wrapping_mul(P1).wrapping_add(P4)
}

#[inline(always)]
pub(crate) fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// XXH64(bytes, seed = 0).
pub fn checksum64(bytes: &[u8]) -> u64 {
    let mut h = Hasher64::new();
    h.update(bytes);
    h.finish()
}

/// Incremental `checksum64` (XXH64, seed 0), so blocks far larger than RAM
/// can be hashed while they stream. Equal to `checksum64` of the
/// concatenated input (tested).
#[derive(Clone)]
pub struct Hasher64 {
    v: [u64; 4],
    buf: [u8; 32],
    buf_len: usize,
    total: u64,
}

impl Default for Hasher64 {
    fn default() -> Self {
        Hasher64::new()
    }
}

impl Hasher64 {
    pub fn new() -> Hasher64 {
        Hasher64 {
            v: [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)],
            buf: [0; 32],
            buf_len: 0,
            total: 0,
        }
    }

    fn stripe(&mut self, s: &[u8]) {
        for (i, v) in self.v.iter_mut().enumerate() {
            *v = round(*v, le64(&s[i * 8..i * 8 + 8]));
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.buf_len > 0 {
            let take = (32 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 32 {
                return;
            }
            let b = self.buf;
            self.stripe(&b);
            self.buf_len = 0;
        }
        let mut stripes = data.chunks_exact(32);
        for s in &mut stripes {
            self.stripe(s);
        }
        let rest = stripes.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    pub fn finish(&self) -> u64 {
        let mut h = if self.total >= 32 {
            let [v1, v2, v3, v4] = self.v;
            let mut h = v1
                .rotate_left(1)
                .wrapping_add(v2.rotate_left(7))
                .wrapping_add(v3.rotate_left(12))
                .wrapping_add(v4.rotate_left(18));
            for v in self.v {
                h = merge(h, v);
            }
            h
        } else {
            P5
        };
        h = h.wrapping_add(self.total);
        let rest = &self.buf[..self.buf_len];
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            h ^= round(0, le64(w));
            h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        }
        let mut tail = words.remainder();
        if tail.len() >= 4 {
            let w = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
            h ^= u64::from(w).wrapping_mul(P1);
            h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            tail = &tail[4..];
        }
        for &b in tail {
            h ^= u64::from(b).wrapping_mul(P5);
            h = h.rotate_left(11).wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^= h >> 32;
        h
    }
}

/// 32-bit fold of [`checksum64`]: `lo32 ^ hi32`.
pub fn checksum32(bytes: &[u8]) -> u32 {
    let h = checksum64(bytes);
    (h as u32) ^ ((h >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn xxh64_reference_vectors() {
        // Published XXH64 (seed 0) values.
        assert_eq!(checksum64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(checksum64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(checksum64(b"abc"), 0x44BC_2CF5_AD77_0999);
    }

    /// 0, 1, 3, 4, 7, 8, 31, 32, 33, 100, 1000 bytes of a fixed pattern:
    /// values computed once with this implementation and pinned, so any
    /// change to the function (or a platform difference) is caught.
    #[test]
    fn pinned_vectors() {
        let data: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 3)) as u8)
            .collect();
        let got: Vec<(usize, u64, u32)> = [0usize, 1, 3, 4, 7, 8, 31, 32, 33, 100, 1000]
            .iter()
            .map(|&n| (n, checksum64(&data[..n]), checksum32(&data[..n])))
            .collect();
        let want: &[(usize, u64, u32)] = &PINNED;
        assert_eq!(got, want);
    }

    const PINNED: [(usize, u64, u32); 11] = [
        (0, 17241709254077376921, 3198038702),
        (1, 16804241149081757544, 842108706),
        (3, 16560508008668546714, 23197904),
        (4, 4273211793806044816, 1352454636),
        (7, 17965687464754085019, 3808955659),
        (8, 5793938173276435664, 2095022274),
        (31, 6782232415548948657, 3874493635),
        (32, 12817328416032775776, 3066499625),
        (33, 1913873699655620628, 1180756457),
        (100, 7609232741931493341, 1837124352),
        (1000, 8941042231651286460, 3343108917),
    ];

    proptest! {
        #[test]
        fn single_bit_flip_changes_value(data in proptest::collection::vec(any::<u8>(), 1..600), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut flipped = data.clone();
            let i = pos.index(flipped.len());
            flipped[i] ^= 1 << bit;
            prop_assert_ne!(checksum64(&data), checksum64(&flipped));
            prop_assert_ne!(checksum32(&data), checksum32(&flipped));
        }
    }
}
