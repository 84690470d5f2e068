//! Codepoint classification and the GPT-2 byte-to-unicode mapping, as llama.cpp's
//! `unicode.cpp` defines them.
//!
//! Classification comes from the range table in [`super::unicode_data`], copied from llama.cpp,
//! so `\p{L}`, `\p{N}` and `\s` mean here exactly what they mean there.

use super::unicode_data::{RANGE_FLAGS, RANGE_STARTS, WHITESPACE};

const UNDEFINED: u16 = 0x0001;
const NUMBER: u16 = 0x0002;
const LETTER: u16 = 0x0004;
const PUNCTUATION: u16 = 0x0020;
const WHITESPACE_BIT: u16 = 0x0100;
const CATEGORY_MASK: u16 = 0x00FF;

/// llama.cpp's `unicode_cpt_flags` for one codepoint: one category bit plus the whitespace bit.
///
/// The all-zero value is what llama.cpp's splitters see past the end of a segment; every real
/// codepoint has at least one bit set (unassigned ones carry UNDEFINED).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpFlags(u16);

impl CpFlags {
    /// Flags of "no codepoint" (out of the current segment).
    pub(crate) const NONE: CpFlags = CpFlags(0);

    pub(crate) fn is_letter(self) -> bool {
        self.0 & LETTER != 0
    }
    pub(crate) fn is_number(self) -> bool {
        self.0 & NUMBER != 0
    }
    pub(crate) fn is_whitespace(self) -> bool {
        self.0 & WHITESPACE_BIT != 0
    }
    /// `as_uint() != 0` in llama.cpp: true for every codepoint inside the segment.
    pub(crate) fn is_any(self) -> bool {
        self.0 != 0
    }
    /// The category bits alone (`category_flag()` in llama.cpp).
    pub(crate) fn category(self) -> u16 {
        self.0 & CATEGORY_MASK
    }
    pub(crate) fn is_number_category(self) -> bool {
        self.category() == NUMBER
    }
    pub(crate) fn is_punctuation_category(self) -> bool {
        self.category() == PUNCTUATION
    }
}

/// Flags of the 128 ASCII codepoints, precomputed because English text is mostly ASCII.
static ASCII_FLAGS: [CpFlags; 128] = build_ascii_flags();

const fn build_ascii_flags() -> [CpFlags; 128] {
    let mut out = [CpFlags(UNDEFINED); 128];
    let mut cp = 0usize;
    let mut range = 0usize;
    while cp < 128 {
        while range + 1 < RANGE_STARTS.len() && RANGE_STARTS[range + 1] as usize <= cp {
            range += 1;
        }
        let mut bits = RANGE_FLAGS[range] as u16;
        if matches!(cp, 0x09..=0x0D | 0x20) {
            bits |= WHITESPACE_BIT;
        }
        out[cp] = CpFlags(bits);
        cp += 1;
    }
    out
}

/// Flags of one codepoint, as `unicode_cpt_flags_from_cpt`.
pub(crate) fn flags(cp: u32) -> CpFlags {
    if cp < 128 {
        return ASCII_FLAGS[cp as usize];
    }
    // The table starts at 0, so partition_point is at least 1 here.
    let idx = RANGE_STARTS.partition_point(|&start| start <= cp) - 1;
    let mut bits = u16::from(RANGE_FLAGS[idx]);
    if WHITESPACE.binary_search(&cp).is_ok() {
        bits |= WHITESPACE_BIT;
    }
    CpFlags(bits)
}

/// GPT-2's reversible byte-to-unicode table: printable Latin-1 bytes map to themselves, the
/// rest to U+0100 upwards in byte order (llama.cpp `unicode_byte_to_utf8_map`).
pub(crate) static BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

const fn is_printable_byte(b: usize) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let cp = if is_printable_byte(b) {
            b as u32
        } else {
            n += 1;
            255 + n
        };
        out[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    out
}

/// Inverse of [`BYTE_TO_CHAR`]: the byte a byte-level BPE character stands for.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 && is_printable_byte(cp as usize) {
        return Some(cp as u8);
    }
    if (256..256 + 68).contains(&cp) {
        // The n-th non-printable byte (in byte order) maps to 256 + n.
        let mut n = 256u32;
        for b in 0..256usize {
            if !is_printable_byte(b) {
                if n == cp {
                    return Some(b as u8);
                }
                n += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn categories_match_llama_cpp() {
        assert!(flags('a' as u32).is_letter());
        assert!(flags('7' as u32).is_number());
        assert!(flags(' ' as u32).is_whitespace());
        assert!(flags(0x00A0).is_whitespace());
        assert!(flags(0x3000).is_whitespace());
        assert!(flags('é' as u32).is_letter());
        assert!(flags('²' as u32).is_number());
        assert!(flags('Ⅻ' as u32).is_number());
        assert!(flags('٣' as u32).is_number());
        assert!(flags('日' as u32).is_letter());
        assert!(flags('。' as u32).is_punctuation_category());
        assert!(!flags('🦙' as u32).is_letter());
        assert!(flags(0x10FFFF).is_any());
    }
}
