//! Chat templates: turn a conversation into the prompt text a model was trained on.
//!
//! GGUF files carry the Hugging Face Jinja template in `tokenizer.chat_template`. We render it
//! with minijinja set up like transformers' `apply_chat_template` environment
//! (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, `strftime_now`, a
//! Python-style `tojson`) plus Python string/dict methods (minijinja-contrib `pycompat`), so the
//! output matches what transformers would produce.
//!
//! The template is model-supplied and message content is client-supplied, so both are treated as
//! hostile: content is only ever passed as data (never spliced into template source), and every
//! render runs on a fuel budget (bounds instructions executed) and an output cap (bounds memory).

use std::io::{self, Write};
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::Tokenizer;

/// Instructions one render may execute. Real templates spend a few hundred to a few thousand per
/// message (Gemma 4's is quadratic: ~2,000 messages fit), far beyond any context window we serve,
/// while a runaway loop stops after about half a second on a desktop core.
pub const RENDER_FUEL: u64 = 10_000_000;

/// Largest rendered prompt we accept. Far above any context window of the models we run.
pub const MAX_RENDERED_BYTES: usize = 4 << 20;

/// The template's name inside its private environment; appears in error locations.
const TEMPLATE_NAME: &str = "chat_template";

/// ChatML, used when a model has no template, as llama.cpp does (`CHATML_TEMPLATE_SRC` in
/// `common/chat.cpp`).
const CHATML_SOURCE: &str = "{%- for message in messages -%}\n  \
     {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n\
     {%- endfor -%}\n\
     {%- if add_generation_prompt -%}\n  {{- '<|im_start|>assistant\\n' -}}\n{%- endif -%}";

/// Chat template failures. Messages carry minijinja's text, including the template line.
#[derive(Debug, Error)]
pub enum ChatError {
    /// The template source does not parse.
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    /// The template called `raise_exception`, typically rejecting the conversation's shape
    /// (e.g. roles not alternating).
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),
    /// Rendering failed (undefined operation, type error, ...).
    #[error("chat template failed: {0}")]
    Render(String),
    /// Rendering ran out of fuel: the template loops too long.
    #[error("chat template exceeded its instruction budget of {RENDER_FUEL}")]
    OutOfFuel,
    /// The output grew beyond [`MAX_RENDERED_BYTES`].
    #[error("chat template output exceeded {MAX_RENDERED_BYTES} bytes")]
    OutputTooLarge,
    /// A message holds control-token text and the template rewrites message content (e.g.
    /// slices it), so that text cannot be told apart from the template's own tokens.
    #[error(
        "message content contains special-token text such as `{0}`, and this model's chat \
         template alters message content, so it cannot be kept as plain text; remove it"
    )]
    SpecialTextInAlteredContent(String),
}

/// Private-use code points (plane 16) from which [`ChatTemplate::render_marked`] picks the
/// pair that delimits a content placeholder (`open index close`): the first pair that occurs
/// neither in the render nor in any message.
const MARK_FIRST: u32 = 0x10_0000;
const MARK_TRIES: u32 = 64;

/// A rendered conversation and where the message contents ended up in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Exactly what [`ChatTemplate::render`] returns.
    pub text: String,
    /// Byte ranges of `text` that are message content (client data), in order; `None` when
    /// the template transforms content beyond recognition (see `render_marked`).
    pub content: Option<Vec<Range<usize>>>,
}

/// One conversation turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl ChatMessage {
    /// Shorthand constructor.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template; build once per model and share (it is `Send + Sync`).
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source` (the GGUF's `tokenizer.chat_template`). `bos_token`/`eos_token` are the
    /// token texts the template sees as `bos_token`/`eos_token`.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        configure(&mut env);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|e| ChatError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// ChatML (`<|im_start|>role\ncontent<|im_end|>\n`), for models without a template: the same
    /// fallback llama.cpp uses.
    pub fn chatml_fallback(bos_token: &str, eos_token: &str) -> ChatTemplate {
        ChatTemplate::new(CHATML_SOURCE, bos_token, eos_token)
            .expect("the built-in ChatML template compiles")
    }

    /// Renders `messages`; with `add_generation_prompt` the output ends with the header that opens
    /// the assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::Render(describe(&e)))?;
        let ctx = context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            // transformers always passes these, as None when absent; templates test
            // `tools is not none` and would fail on an undefined value.
            tools => Value::from(()),
            documents => Value::from(()),
        };
        let mut out = CappedWriter::default();
        match tmpl.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.buf).map_err(|e| ChatError::Render(e.to_string())),
            Err(_) if out.overflowed => Err(ChatError::OutputTooLarge),
            Err(e) => Err(classify(&e)),
        }
    }
}

impl ChatTemplate {
    /// Renders `messages` and finds the message contents in the output: the template is
    /// rendered a second time with each content replaced by a unique placeholder, and the
    /// placeholders are substituted back (as given, then trimmed, since templates such as
    /// Llama 3's `| trim` content). When that reproduces the real render exactly, the
    /// substituted ranges are the contents; otherwise `content` is `None`.
    pub fn render_marked(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Rendered, ChatError> {
        let text = self.render(messages, add_generation_prompt)?;
        let content = self.locate_contents(&text, messages, add_generation_prompt);
        Ok(Rendered { text, content })
    }

    fn locate_contents(
        &self,
        text: &str,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Option<Vec<Range<usize>>> {
        let unused =
            |c: &char| !text.contains(*c) && !messages.iter().any(|m| m.content.contains(*c));
        let (open, close) = (0..MARK_TRIES)
            .filter_map(|i| {
                let open = char::from_u32(MARK_FIRST + 2 * i)?;
                let close = char::from_u32(MARK_FIRST + 2 * i + 1)?;
                (unused(&open) && unused(&close)).then_some((open, close))
            })
            .next()?;
        let marked: Vec<ChatMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage::new(m.role.clone(), format!("{open}{i}{close}")))
            .collect();
        let marked = self.render(&marked, add_generation_prompt).ok()?;
        [false, true].into_iter().find_map(|trim| {
            let content = |i: usize| {
                let c = messages[i].content.as_str();
                if trim {
                    c.trim()
                } else {
                    c
                }
            };
            let mut out = String::with_capacity(text.len());
            let mut spans = Vec::new();
            let mut rest = marked.as_str();
            while let Some(start) = rest.find(open) {
                out.push_str(&rest[..start]);
                let after = &rest[start + open.len_utf8()..];
                let end = after.find(close)?;
                let i: usize = after[..end].parse().ok()?;
                if i >= messages.len() {
                    return None;
                }
                let c = content(i);
                spans.push(out.len()..out.len() + c.len());
                out.push_str(c);
                rest = &after[end + close.len_utf8()..];
            }
            out.push_str(rest);
            (out == text).then_some(spans)
        })
    }

    /// Renders `messages` and tokenizes the result so that only the template's own text can
    /// produce control tokens: `<|im_end|>` typed inside a message stays plain text and cannot
    /// end the turn. llama.cpp tokenizes the whole render with special parsing on, so there a
    /// message can inject them; for every conversation without such text the ids are the same
    /// as llama.cpp's. A template that alters content (so the contents cannot be located) is
    /// still served unless some content holds control-token text, which is then refused.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ChatError> {
        let r = self.render_marked(messages, add_generation_prompt)?;
        match &r.content {
            Some(spans) => Ok(tokenizer.encode_with_plain_spans(&r.text, spans)),
            None => match messages
                .iter()
                .find_map(|m| tokenizer.find_control_text(&m.content))
            {
                Some(t) => Err(ChatError::SpecialTextInAlteredContent(t.to_owned())),
                None => Ok(tokenizer.encode(&r.text, true)),
            },
        }
    }
}

/// Environment settings and globals that transformers' chat-template environment provides.
fn configure(env: &mut Environment<'static>) {
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(RENDER_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(env);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_filter("length", length);
    env.add_filter("count", length);
    env.add_test("iterable", is_iterable);
}

/// Jinja2's `length`: like minijinja's, except an undefined value has length 0 (jinja2's
/// `Undefined.__len__`), which templates rely on for optional variables.
fn length(value: &Value) -> Result<Value, Error> {
    if value.is_undefined() {
        Ok(Value::from(0))
    } else {
        minijinja::filters::length(value).map(Value::from)
    }
}

/// Python's notion of iterable: `none` and undefined are not (minijinja's builtin says they are,
/// which sends `tools is iterable and tools | length > 0` into an error).
fn is_iterable(value: &Value) -> bool {
    match value.kind() {
        ValueKind::Undefined
        | ValueKind::None
        | ValueKind::Bool
        | ValueKind::Number
        | ValueKind::Invalid => false,
        ValueKind::Plain => value.try_iter().is_ok(),
        _ => true,
    }
}

/// Maps a render error to [`ChatError`], recognising `raise_exception` and fuel exhaustion.
fn classify(err: &Error) -> ChatError {
    if err.kind() == ErrorKind::OutOfFuel {
        return ChatError::OutOfFuel;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return ChatError::Raised(raised.0.clone());
        }
        source = e.source();
    }
    ChatError::Render(describe(err))
}

/// minijinja's message plus the template line, and the causes.
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Marks an error as coming from the template's own `raise_exception`.
#[derive(Debug, Error)]
#[error("{0}")]
struct Raised(String);

/// `raise_exception(message)`: the template rejects its input.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(
        Error::new(ErrorKind::InvalidOperation, "raise_exception called")
            .with_source(Raised(message)),
    )
}

/// Collects output up to [`MAX_RENDERED_BYTES`], then fails the render.
#[derive(Default)]
struct CappedWriter {
    buf: Vec<u8>,
    overflowed: bool,
}

impl Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("chat template output too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// transformers' templates may use a `{% generation %}...{% endgeneration %}` block (it marks the
/// assistant's tokens for training masks and renders its body unchanged). minijinja has no such
/// tag, so we turn it into an always-true `if`, keeping the whitespace-control markers so the
/// output is byte-identical. Only the template source is rewritten, never message content.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let (lead, body) = split_marker(inner, true);
        let (body, trail) = split_marker(body.trim(), false);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(lead);
                out.push(' ');
                out.push_str(r);
                out.push(' ');
                out.push_str(trail);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Splits a leading (or trailing) `-`/`+` whitespace-control marker off a tag's inside.
fn split_marker(s: &str, leading: bool) -> (&str, &str) {
    if leading {
        match s.chars().next() {
            Some('-' | '+') => (&s[..1], &s[1..]),
            _ => ("", s),
        }
    } else {
        match s.chars().last() {
            Some('-' | '+') => (&s[..s.len() - 1], &s[s.len() - 1..]),
            _ => (s, ""),
        }
    }
}

/// `strftime_now(format)`: the current UTC time formatted like Python's `strftime`. Templates use
/// it for "Today's date" lines. Supports the directives templates use in practice.
fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?
        .as_secs();
    strftime(&format, secs).map(Value::from)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats Unix time `secs` (UTC). Days to civil date: Howard Hinnant's `civil_from_days`.
pub(crate) fn strftime(format: &str, secs: u64) -> Result<String, Error> {
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let (h, m, s) = (sod / 3600, sod / 60 % 60, sod % 60);
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // glibc's `%-d` style (no padding) is accepted too.
        let mut spec = chars.next();
        let unpadded = spec == Some('-');
        if unpadded {
            spec = chars.next();
        }
        let num = |v: i64, width: usize| {
            if unpadded {
                v.to_string()
            } else {
                format!("{v:0width$}")
            }
        };
        match spec {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year % 100, 2)),
            Some('m') => out.push_str(&num(month, 2)),
            Some('d') => out.push_str(&num(day, 2)),
            Some('H') => out.push_str(&num(h as i64, 2)),
            Some('M') => out.push_str(&num(m as i64, 2)),
            Some('S') => out.push_str(&num(s as i64, 2)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// transformers' `tojson`: Python `json.dumps(x, ensure_ascii=False, indent=..., separators=...,
/// sort_keys=...)`. minijinja's own `tojson` escapes HTML characters and uses compact
/// separators, which would change the prompt.
fn tojson(value: &Value, args: &[Value], kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = match args.first() {
        Some(v) => Some(v.clone()),
        None => kwargs.get("indent")?,
    };
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_owned(),
            None => {
                let n = usize::try_from(v.clone()).map_err(|_| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be a count",
                    )
                })?;
                " ".repeat(n.min(64))
            }
        }),
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be (item, key)",
            ))
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let fmt = PyJsonFormatter {
        item_sep,
        key_sep,
        indent,
        level: 0,
        has_value: false,
    };
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    let res = if sort_keys == Some(true) {
        serde_json::to_value(value).and_then(|v| sorted(v).serialize(&mut ser))
    } else {
        value.serialize(&mut ser)
    };
    res.map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = String::from_utf8(buf)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let text = if ensure_ascii == Some(true) {
        escape_non_ascii(&text)
    } else {
        text
    };
    // Like Jinja's tojson, the result is markup-safe (not auto-escaped again).
    Ok(Value::from_safe_string(text))
}

/// `v` with every object's keys in sorted order. Explicit, because serde_json's map keeps
/// insertion order when any crate in the build enables its `preserve_order` feature
/// (llguidance does).
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<_> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// Python's `ensure_ascii=True`: non-ASCII characters as `\uXXXX` (surrogate pairs above the BMP).
/// Non-ASCII text only occurs inside JSON strings, so escaping every such character is exact.
fn escape_non_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// A serde_json formatter that lays out JSON like Python's `json.dumps`.
struct PyJsonFormatter {
    item_sep: String,
    key_sep: String,
    indent: Option<String>,
    level: usize,
    has_value: bool,
}

impl PyJsonFormatter {
    fn newline<W: ?Sized + Write>(&self, w: &mut W, level: usize) -> io::Result<()> {
        if let Some(indent) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..level {
                w.write_all(indent.as_bytes())?;
            }
        }
        Ok(())
    }

    fn open<W: ?Sized + Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(w, self.level)?;
        }
        w.write_all(bracket)
    }

    fn item<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(self.item_sep.as_bytes())?;
        }
        self.newline(w, self.level)
    }
}

impl serde_json::ser::Formatter for PyJsonFormatter {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.item(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(self.key_sep.as_bytes())
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_date() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S", t).unwrap(),
            "2024-02-29 13:05:09"
        );
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "29 Feb 2024");
        assert_eq!(
            strftime("%B %-d, %Y (%A, %a)", t).unwrap(),
            "February 29, 2024 (Thursday, Thu)"
        );
        assert!(strftime("%Q", t).is_err());
    }

    #[test]
    fn generation_tags_become_ifs() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation -%}b{% endgeneration %}c{% if x %}"),
            "a{%- if true -%}b{% endif %}c{% if x %}"
        );
    }
}
