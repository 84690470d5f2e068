//! Fitting text into packets: UTF-8-safe splitting, encoded sizes, and telling encodings
//! apart.

use alloc::vec::Vec;

use crate::types::Encoding;

/// Splits `s` into pieces of at most `max_bytes` bytes, never inside a UTF-8 character; the
/// pieces concatenate to `s`, and an empty `s` yields nothing.
///
/// A character longer than `max_bytes` (possible only when `max_bytes < 4`) is yielded alone,
/// the only way to make progress: pass at least 4 to keep every piece within the limit.
pub fn split_utf8(s: &str, max_bytes: usize) -> SplitUtf8<'_> {
    SplitUtf8 { rest: s, max_bytes }
}

/// Iterator returned by [`split_utf8`].
#[derive(Clone, Debug)]
pub struct SplitUtf8<'a> {
    rest: &'a str,
    max_bytes: usize,
}

impl<'a> Iterator for SplitUtf8<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        let mut end = self.max_bytes.min(self.rest.len());
        while !self.rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            // The first character alone is longer than max_bytes.
            end = self.rest.chars().next().map_or(0, char::len_utf8);
        }
        let (piece, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(piece)
    }
}

/// Worst-case growth of text written into a JSON string: a control character becomes `\u00XX`.
pub const JSON_WORST_CASE_EXPANSION: usize = 6;

/// Bytes that `c` takes inside a JSON string as `serde_json` writes it: `"` `\` and the short
/// control escapes take 2, other control characters 6 (`\u00XX`), anything else its UTF-8 length
/// (non-ASCII is not escaped).
pub const fn json_escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        '\u{0}'..='\u{1f}' => 6,
        _ => c.len_utf8(),
    }
}

/// Bytes that `s` takes inside a JSON string (without the quotes).
pub fn json_escaped_len(s: &str) -> usize {
    s.chars().map(json_escaped_char_len).sum()
}

/// Length of a postcard varint holding `n`.
const fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// Bytes of the chunk `{id, seq, delta: ""}` in `enc`, less the delta's own bytes and (postcard)
/// its length prefix.
fn chunk_fixed_len(id: Option<&str>, seq: u32, enc: Encoding) -> usize {
    match enc {
        Encoding::Text => 0,
        // {"id":…,"seq":…,"delta":""}
        Encoding::Json => {
            let id_len = id.map_or(4, |id| json_escaped_len(id) + 2);
            r#"{"id":,"seq":,"delta":""}"#.len() + id_len + decimal_len(seq.into())
        }
        // version, variant index, Option tag, [id len, id], seq
        Encoding::Postcard => {
            let id_len = id.map_or(0, |id| varint_len(id.len() as u64) + id.len());
            1 + 1 + 1 + id_len + varint_len(seq.into())
        }
    }
}

/// Exact size of `encode_response(&Response::Chunk(Chunk { id, seq, delta }), enc)`, without
/// encoding it.
pub fn chunk_encoded_len(id: Option<&str>, seq: u32, delta: &str, enc: Encoding) -> usize {
    let fixed = chunk_fixed_len(id, seq, enc);
    match enc {
        Encoding::Text => delta.len(),
        Encoding::Json => fixed + json_escaped_len(delta),
        Encoding::Postcard => fixed + varint_len(delta.len() as u64) + delta.len(),
    }
}

/// Conservative: how many raw bytes of delta always fit into one chunk of at most `max_payload`
/// bytes, whatever the text and whatever the `seq` (the largest seq is assumed). For JSON this
/// assumes every byte is a control character ([`JSON_WORST_CASE_EXPANSION`]), so it is 1/6 of
/// the room; [`split_chunk_delta`] is exact and packs ordinary text six times denser. Pair this
/// with [`split_utf8`]; a result below 4 cannot guarantee progress and should be treated as
/// "does not fit". `max_payload` is the MQTT packet limit less the packet's own overhead (fixed
/// header, topic, properties), which the MQTT layer knows.
pub fn chunk_delta_budget(max_payload: usize, id: Option<&str>, enc: Encoding) -> usize {
    let room = max_payload.saturating_sub(chunk_fixed_len(id, u32::MAX, enc));
    match enc {
        Encoding::Text => room,
        Encoding::Json => room / JSON_WORST_CASE_EXPANSION,
        // n + varint_len(n) <= room, since varint_len(n) <= varint_len(room).
        Encoding::Postcard => room.saturating_sub(varint_len(room as u64)),
    }
}

/// Exact: splits `delta` into the fewest greedy pieces (whole characters) such that each one, as
/// a [`Chunk`] with this `id` and any `seq`, encodes to at most `max_payload` bytes in `enc`.
/// An empty `delta` gives no pieces; `None` means not even one character fits.
pub fn split_chunk_delta<'a>(
    delta: &'a str,
    id: Option<&str>,
    max_payload: usize,
    enc: Encoding,
) -> Option<Vec<&'a str>> {
    let fixed = chunk_fixed_len(id, u32::MAX, enc);
    let fits = |cost: usize| -> bool {
        let prefix = match enc {
            Encoding::Postcard => varint_len(cost as u64),
            Encoding::Text | Encoding::Json => 0,
        };
        fixed + prefix + cost <= max_payload
    };
    let mut pieces = Vec::new();
    let (mut start, mut cost) = (0, 0);
    for (i, c) in delta.char_indices() {
        let c_cost = match enc {
            Encoding::Json => json_escaped_char_len(c),
            Encoding::Text | Encoding::Postcard => c.len_utf8(),
        };
        if !fits(cost + c_cost) {
            if cost == 0 || !fits(c_cost) {
                return None;
            }
            pieces.push(&delta[start..i]);
            (start, cost) = (i, 0);
        }
        cost += c_cost;
    }
    if start < delta.len() {
        pieces.push(&delta[start..]);
    }
    Some(pieces)
}

/// The encoding of a payload: by MQTT 5 content type when it names one of ours
/// (`application/json`, `application/postcard`, `text/plain`; parameters such as `; charset=utf-8`
/// and letter case are ignored), otherwise JSON when the first non-whitespace byte is `{`, else
/// text. postcard is never guessed: it needs the content type (or the postcard topic, which the
/// MQTT layer maps to [`Encoding::Postcard`] itself). A text prompt that starts with `{` must
/// therefore be sent with content type `text/plain`.
pub fn sniff(payload: &[u8], content_type: Option<&str>) -> Encoding {
    if let Some(ct) = content_type {
        let media = ct.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/json") {
            return Encoding::Json;
        }
        if media.eq_ignore_ascii_case("application/postcard") {
            return Encoding::Postcard;
        }
        if media.eq_ignore_ascii_case("text/plain") {
            return Encoding::Text;
        }
    }
    match first_non_json_ws(payload) {
        Some(b'{') => Encoding::Json,
        _ => Encoding::Text,
    }
}

pub(crate) fn first_non_json_ws(payload: &[u8]) -> Option<u8> {
    payload
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}
