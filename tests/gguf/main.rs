//! GGUF reader tests, one file per group: a hand-built file per rejection rule, writer round
//! trips, special ids, the real model and llama.cpp's vocab files, and a seeded mutation sweep
//! that must never panic. This file holds what they share: the byte builder, a seeded generator
//! and `assert_err!`.

use llamabus::gguf::{value_type, Gguf, GgufError};

/// Asserts `e` matches `pat` and its message contains every string in `needles`.
macro_rules! assert_err {
    ($e:expr, $pat:pat $(if $guard:expr)?, $($needle:expr),* $(,)?) => {{
        let e = $e;
        assert!(matches!(e, $pat $(if $guard)?), "wrong variant: {e:?}");
        let msg = e.to_string();
        $( assert!(msg.contains($needle), "message {msg:?} lacks {:?}", $needle); )*
    }};
}

mod mutation;
mod real_files;
mod rejects;
mod special_ids;
mod writer;

/// A little-endian byte builder for crafting GGUF files field by field.
#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    /// Magic, version and the two counts.
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw::default()
            .bytes(b"GGUF")
            .u32(version)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(self, v: u8) -> Raw {
        self.bytes(&[v])
    }
    fn u32(self, v: u32) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    /// A GGUF string: u64 length, then the bytes.
    fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A u32 metadata pair.
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key).u32(value_type::U32).u32(v)
    }
    /// A tensor info record.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of `align`.
    fn pad(mut self, align: usize) -> Raw {
        let n = self.0.len().next_multiple_of(align);
        self.0.resize(n, 0);
        self
    }
    fn zeros(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn parse(self) -> Result<Gguf, GgufError> {
        Gguf::from_bytes(self.0)
    }
    fn err(self) -> GgufError {
        match self.parse() {
            Ok(g) => panic!("expected an error, parsed {g:?}"),
            Err(e) => e,
        }
    }
}

const F32: u32 = 0;
const Q4_1: u32 = 3;

/// Deterministic pseudo-random bytes (xorshift64*), so tests need no `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
