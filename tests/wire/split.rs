//! Splitting streamed text into chunks that fit the packet budget, exactly and on UTF-8
//! boundaries (property tests with a seeded generator).

use llamabus::mqtt::wire::*;

/// Deterministic xorshift generator, so the property tests need no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const ALPHABET: &[char] = &[
    'a', 'Z', ' ', '0', '"', '\\', '\n', '\r', '\t', '\u{0}', '\u{1}', '\u{1f}', '\u{7f}', 'é',
    'ß', '€', '中', '語', '\u{2028}', '🦀', '😀', '𝄞',
];

fn random_string(rng: &mut Rng) -> String {
    let len = rng.below(60);
    (0..len)
        .map(|_| ALPHABET[rng.below(ALPHABET.len())])
        .collect()
}

#[test]
fn split_utf8_property() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..5000 {
        let s = random_string(&mut rng);
        let max = 4 + rng.below(20);
        let pieces: Vec<&str> = split_utf8(&s, max).collect();
        assert_eq!(pieces.concat(), s);
        for p in &pieces {
            assert!(!p.is_empty());
            assert!(p.len() <= max, "{p:?} longer than {max}");
        }
        // Greedy: each piece but the last is full up to the next character boundary.
        for w in pieces.windows(2) {
            let next = w[1].chars().next().unwrap();
            assert!(w[0].len() + next.len_utf8() > max);
        }
    }
}

#[test]
fn split_utf8_edges() {
    assert_eq!(split_utf8("", 4).count(), 0);
    assert_eq!(split_utf8("abc", 10).collect::<Vec<_>>(), ["abc"]);
    assert_eq!(split_utf8("🦀🦀a", 5).collect::<Vec<_>>(), ["🦀", "🦀a"]);
    // Below 4 bytes a long character still comes out whole, alone.
    assert_eq!(split_utf8("a🦀b", 2).collect::<Vec<_>>(), ["a", "🦀", "b"]);
    assert_eq!(split_utf8("ab", 0).collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn json_escaped_len_matches_serde_json() {
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let s = random_string(&mut rng);
        let quoted = serde_json::to_string(&s).unwrap();
        assert_eq!(json_escaped_len(&s), quoted.len() - 2, "{s:?}");
    }
    for b in 0u8..0x80 {
        let s = (b as char).to_string();
        assert_eq!(
            json_escaped_len(&s),
            serde_json::to_string(&s).unwrap().len() - 2,
            "{b:#x}"
        );
    }
}

#[test]
fn chunk_encoded_len_is_exact() {
    let mut rng = Rng(7);
    let ids = [None, Some("r1"), Some("q\"\n"), Some("ü")];
    for _ in 0..2000 {
        let delta = random_string(&mut rng);
        let id = ids[rng.below(ids.len())];
        let seq = match rng.below(3) {
            0 => rng.below(200) as u32,
            1 => u32::MAX,
            _ => rng.next() as u32,
        };
        for enc in [Encoding::Text, Encoding::Json, Encoding::Postcard] {
            let r = Response::Chunk(Chunk {
                id: id.map(str::to_owned),
                seq,
                delta: delta.clone(),
            });
            assert_eq!(
                chunk_encoded_len(id, seq, &delta, enc),
                encode_response(&r, enc).len(),
                "{enc:?} {id:?} {seq} {delta:?}"
            );
        }
    }
}

#[test]
fn split_chunk_delta_fits_every_piece_exactly() {
    let mut rng = Rng(1234);
    for _ in 0..2000 {
        let delta = random_string(&mut rng);
        let id = if rng.below(2) == 0 {
            None
        } else {
            Some("req-1")
        };
        let max = 50 + rng.below(80);
        for enc in [Encoding::Text, Encoding::Json, Encoding::Postcard] {
            let pieces = split_chunk_delta(&delta, id, max, enc).expect("fits");
            assert_eq!(pieces.concat(), delta);
            for p in &pieces {
                assert!(!p.is_empty());
                assert!(chunk_encoded_len(id, u32::MAX, p, enc) <= max);
            }
            // Greedy: no piece could have taken the next character.
            for w in pieces.windows(2) {
                let next = w[1].chars().next().unwrap();
                let longer = format!("{}{next}", w[0]);
                assert!(chunk_encoded_len(id, u32::MAX, &longer, enc) > max);
            }
        }
    }
}

#[test]
fn split_chunk_delta_reports_no_room() {
    assert_eq!(
        split_chunk_delta("", Some("id"), 10, Encoding::Json),
        Some(vec![])
    );
    // {"id":null,"seq":4294967295,"delta":""} is 39 bytes; a control char needs 6 more.
    assert_eq!(split_chunk_delta("a", None, 39, Encoding::Json), None);
    assert_eq!(
        split_chunk_delta("a", None, 40, Encoding::Json),
        Some(vec!["a"])
    );
    assert_eq!(split_chunk_delta("\u{1}", None, 44, Encoding::Json), None);
    assert_eq!(
        split_chunk_delta("\u{1}", None, 45, Encoding::Json),
        Some(vec!["\u{1}"])
    );
    assert_eq!(split_chunk_delta("🦀", None, 3, Encoding::Text), None);
}

#[test]
fn chunk_delta_budget_is_conservative() {
    let mut rng = Rng(99);
    for _ in 0..2000 {
        let delta = random_string(&mut rng);
        let max = 70 + rng.below(200);
        for enc in [Encoding::Text, Encoding::Json, Encoding::Postcard] {
            let budget = chunk_delta_budget(max, Some("r1"), enc);
            assert!(budget >= 4, "{enc:?} {max}");
            for p in split_utf8(&delta, budget) {
                assert!(chunk_encoded_len(Some("r1"), u32::MAX, p, enc) <= max);
            }
        }
    }
    // All control characters: the JSON worst case is reached exactly.
    let worst = "\u{1}".repeat(1000);
    let budget = chunk_delta_budget(1000, None, Encoding::Json);
    assert_eq!(budget, (1000 - 39) / JSON_WORST_CASE_EXPANSION);
    let piece = split_utf8(&worst, budget).next().unwrap();
    assert!(chunk_encoded_len(None, u32::MAX, piece, Encoding::Json) <= 1000);
    assert_eq!(chunk_delta_budget(10, None, Encoding::Json), 0);
}
