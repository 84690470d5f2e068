//! Unit tests on tiny hand-made vocabularies: BPE merge ranking, SPM score order, byte
//! fallback, `add_space_prefix`, special-token partitioning and rendering.

use super::*;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A byte-level BPE vocabulary: tokens 0..=4 are single characters, then merged pieces.
fn bpe(tokens: &[String], merges: &[String], types: Option<&[i32]>) -> Tokenizer {
    let mut spec = TokenizerSpec::new("gpt2", tokens);
    spec.pre = Some("gpt-2");
    spec.merges = Some(merges);
    spec.token_types = types;
    Tokenizer::from_spec(spec).unwrap()
}

#[test]
fn bpe_lowest_rank_merges_first() {
    let tokens = strings(&["a", "b", "c", "Ġ", "ab", "bc", "abc", "Ġa"]);
    // "a b" ranks before "b c": a+b, then ab+c.
    let t = bpe(&tokens, &strings(&["a b", "ab c", "b c"]), None);
    assert_eq!(t.encode("abc", false), [6]);
    // "b c" ranks first: a, bc (and "a bc" is no merge).
    let t = bpe(&tokens, &strings(&["b c", "a b", "ab c"]), None);
    assert_eq!(t.encode("abc", false), [0, 5]);
    // Words are merged separately; the space is byte-encoded as Ġ.
    let t = bpe(&tokens, &strings(&["Ġ a", "a b"]), None);
    assert_eq!(t.encode("ab ab", false), [4, 7, 1]);
}

#[test]
fn bpe_ties_merge_leftmost_first() {
    let tokens = strings(&["a", "aa", "aaa"]);
    // "aaa": both pairs have rank 0; the left one merges first, leaving aa + a.
    let t = bpe(&tokens, &strings(&["a a", "aa a"]), None);
    assert_eq!(t.encode("aaa", false), [2]);
    let t = bpe(&tokens, &strings(&["a a"]), None);
    assert_eq!(t.encode("aaa", false), [1, 0]);
}

#[test]
fn bpe_unknown_bytes_are_dropped_like_llama_cpp() {
    let tokens = strings(&["a", "b"]);
    let t = bpe(&tokens, &[], None);
    // 'z' is no token and no merge: its one-byte fallback lookup fails too.
    assert_eq!(t.encode("azb", false), [0, 1]);
}

#[test]
fn bpe_pieces_unmap_bytes() {
    let tokens = strings(&["Ġhi", "Ċ", "<|end|>", "ðŁ"]);
    let t = bpe(&tokens, &[], Some(&[1, 1, 3, 1]));
    assert_eq!(t.piece_bytes(0), b" hi");
    assert_eq!(t.piece_bytes(1), b"\n");
    assert_eq!(t.piece_bytes(2), b"");
    assert_eq!(t.piece_bytes(3), &[0xF0, 0x9F]);
    assert_eq!(t.decode(&[0, 2]), " hi<|end|>");
    assert!(t.is_eog(2));
}

#[test]
fn special_tokens_only_parsed_on_request() {
    let tokens = strings(&["<", "|", "x", ">", "<|x|>", "u"]);
    let t = bpe(&tokens, &[], Some(&[1, 1, 1, 1, 3, 1]));
    assert_eq!(t.encode("u<|x|>u", true), [5, 4, 5]);
    assert!(!t.encode("u<|x|>u", false).contains(&4));
}

#[test]
fn user_defined_tokens_always_split() {
    let tokens = strings(&["a", "b", "ab", "[X]", "[", "X", "]"]);
    let t = bpe(&tokens, &strings(&["a b"]), Some(&[1, 1, 1, 4, 1, 1, 1]));
    assert_eq!(t.encode("a[X]b", false), [0, 3, 1]);
    // The piece of a user-defined token is its text, in output too.
    assert_eq!(t.piece_bytes(3), b"[X]");
}

/// An SPM vocabulary with `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then `extra` with scores.
fn spm(extra: &[(&str, f32)], add_space_prefix: Option<bool>) -> (Tokenizer, Vec<String>) {
    let mut tokens = strings(&["<unk>", "<s>", "</s>"]);
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (t, s) in extra {
        tokens.push(t.to_string());
        types.push(1);
        scores.push(*s);
    }
    let t = {
        let mut spec = TokenizerSpec::new("llama", &tokens);
        spec.scores = Some(scores);
        spec.token_types = Some(&types);
        spec.add_space_prefix = add_space_prefix;
        Tokenizer::from_spec(spec).unwrap()
    };
    (t, tokens)
}

const BASE: u32 = 3 + 256;

#[test]
fn spm_merges_by_score_and_prefixes_space() {
    let extra = [
        ("▁", -1.0),
        ("a", -2.0),
        ("b", -2.0),
        ("▁a", -1.5),
        ("ab", -0.5),
        ("▁ab", -3.0),
    ];
    let (t, _) = spm(&extra, None);
    assert_eq!(t.kind(), TokenizerKind::Spm);
    assert!(t.add_bos());
    assert_eq!(t.bos(), Some(1));
    // "▁ab": "ab" (-0.5) beats "▁a" (-1.5); then "▁"+"ab" = "▁ab" merges.
    assert_eq!(t.encode("ab", false), [BASE + 5]);
    // Without the prefix space.
    let (t, _) = spm(&extra, Some(false));
    assert_eq!(t.encode("ab", false), [BASE + 4]);
    assert_eq!(t.decode(&[BASE + 4]), "ab");
}

#[test]
fn spm_byte_fallback() {
    let (t, _) = spm(&[("▁", -1.0), ("a", -1.0)], None);
    // 'é' is not a token: its two UTF-8 bytes become <0xC3> <0xA9>.
    assert_eq!(t.encode("aé", false), [BASE, BASE + 1, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(t.decode(&t.encode("aé", false)), "aé");
    assert_eq!(t.piece_bytes(3 + 0x41), b"A");
}

#[test]
fn spm_space_prefix_after_special_token() {
    let (t, _) = spm(&[("▁", -1.0), ("a", -1.0)], None);
    // The control token "</s>" is cut out; the text after it gets its own prefix space.
    assert_eq!(
        t.encode("a</s>a", true),
        [BASE, BASE + 1, 2, BASE, BASE + 1]
    );
}

#[test]
fn unknown_pre_is_an_error_and_missing_pre_warns() {
    let tokens = strings(&["a"]);
    let merges: Vec<String> = Vec::new();
    let mut spec = TokenizerSpec::new("gpt2", &tokens);
    spec.pre = Some("no-such-pre");
    spec.merges = Some(&merges);
    assert!(matches!(
        Tokenizer::from_spec(spec),
        Err(TokenizerError::UnsupportedPre(_))
    ));
    let mut spec = TokenizerSpec::new("gpt2", &tokens);
    spec.merges = Some(&merges);
    let t = Tokenizer::from_spec(spec).unwrap();
    assert_eq!(
        t.kind(),
        TokenizerKind::Bpe {
            pre: "default".into()
        }
    );
    assert!(!t.warnings().is_empty());
}

#[test]
fn stream_decoder_holds_partial_characters() {
    let tokens = strings(&["ðŁ", "¦", "Ļ", "a"]);
    let t = bpe(&tokens, &[], None);
    let mut d = StreamDecoder::new(&t);
    assert_eq!(d.push(3), "a");
    assert_eq!(d.push(0), "");
    assert_eq!(d.push(1), "");
    assert_eq!(d.push(2), "🦙");
    assert_eq!(d.push(0), "");
    assert_eq!(d.finish(), "\u{FFFD}");
}
