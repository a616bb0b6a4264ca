//! Nix's base-32 encoding ("nix32"): the alphabet omits e, o, u, t and the bytes are read
//! from the end, so it is not RFC 4648 base32. Used for store-path hashes and narinfo hashes.

use crate::error::{Error, Result};

/// The 32 characters Nix uses, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Maps an ASCII byte to its value, or 0xff when it is not in [`ALPHABET`].
const DECODE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Length of the nix32 encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 { 0 } else { (n * 8 - 1) / 5 + 1 }
}

/// Whether `c` is a nix32 character.
pub fn is_nix32_char(c: u8) -> bool {
    DECODE[c as usize] != 0xff
}

/// Encodes bytes as nix32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let lo = bytes[i] >> j;
        let hi = bytes
            .get(i + 1)
            .map_or(0, |&c| c.checked_shl(8 - j as u32).unwrap_or(0));
        out.push(ALPHABET[((lo | hi) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes a nix32 string into exactly `N` bytes, rejecting bad characters, wrong lengths
/// and set bits beyond the last byte (so every byte string has one encoding).
pub fn decode<const N: usize>(s: &str) -> Result<[u8; N]> {
    let err = |reason| Error::InvalidNix32 {
        input: s.to_owned(),
        reason,
    };
    if s.len() != encoded_len(N) {
        return Err(err("wrong length"));
    }
    let mut out = [0u8; N];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = DECODE[c as usize];
        if digit == 0xff {
            return Err(err("character outside the nix32 alphabet"));
        }
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        out[i] |= digit << j;
        let carry = (digit as u16) >> (8 - j);
        if i + 1 < N {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(err("non-zero padding bits"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        // sha256("") in nix32, as printed by `nix hash to-base32`.
        let empty = [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
            0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
            0x78, 0x52, 0xb8, 0x55,
        ];
        assert_eq!(
            encode(&empty),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(
            decode::<32>("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").unwrap(),
            empty
        );
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
    }

    #[test]
    fn rejects_bad_input() {
        assert!(decode::<20>("e0000000000000000000000000000000").is_err());
        assert!(decode::<20>("0000").is_err());
        // 32 chars carry 160 bits exactly; 52 chars carry 260 bits for 256: top bits must be 0.
        assert!(decode::<32>("z000000000000000000000000000000000000000000000000000").is_err());
    }

    proptest! {
        #[test]
        fn round_trip_20(bytes in proptest::array::uniform20(any::<u8>())) {
            prop_assert_eq!(decode::<20>(&encode(&bytes)).unwrap(), bytes);
        }
        #[test]
        fn round_trip_32(bytes in proptest::array::uniform32(any::<u8>())) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), 52);
            prop_assert_eq!(decode::<32>(&s).unwrap(), bytes);
        }
    }
}
