//! The rules a request must follow, checked before it reaches the engine.

use alloc::format;
use alloc::string::String;

use crate::format::FormatRef;
use crate::types::{ErrorCode, Message, Request, WireError};
use crate::*;

impl Request {
    /// A request holding only `prompt`.
    pub fn from_prompt(prompt: impl Into<String>) -> Request {
        Request {
            prompt: Some(prompt.into()),
            ..Request::default()
        }
    }

    /// Checks the field rules that the type system does not: exactly one of `prompt` and
    /// `messages`, nothing empty, roles known, floats finite and in range, lengths and counts
    /// capped. The first violation is returned as `bad_request`, naming the field.
    pub fn validate(&self) -> Result<(), WireError> {
        check_len("id", self.id.as_deref(), MAX_ID_BYTES)?;
        match (&self.prompt, &self.messages) {
            (Some(_), Some(_)) => {
                return Err(WireError::bad_request(
                    "`prompt` and `messages` are mutually exclusive: send one of them",
                ))
            }
            (None, None) => {
                return Err(WireError::bad_request(
                    "request has neither `prompt` nor `messages`",
                ))
            }
            (Some(prompt), None) => {
                if prompt.trim().is_empty() {
                    return Err(WireError::bad_request(
                        "`prompt` is empty (or only whitespace)",
                    ));
                }
            }
            (None, Some(messages)) => validate_messages(messages)?,
        }
        if let Some(model) = &self.model {
            if model.is_empty() {
                return Err(WireError::bad_request("`model` is empty"));
            }
            check_len("model", Some(model), MAX_MODEL_BYTES)?;
        }
        if self.max_tokens == Some(0) {
            return Err(WireError::bad_request("`max_tokens` must be at least 1"));
        }
        validate_format(self.format.as_ref())?;
        check_float("temperature", self.temperature, 0.0, 100.0, false)?;
        check_float("top_p", self.top_p, 0.0, 1.0, false)?;
        check_float("min_p", self.min_p, 0.0, 1.0, false)?;
        check_float("repeat_penalty", self.repeat_penalty, 0.0, 100.0, true)?;
        if let Some(stop) = &self.stop {
            if stop.len() > MAX_STOP_STRINGS {
                return Err(WireError::bad_request(format!(
                    "`stop` has {} strings; at most {MAX_STOP_STRINGS} are allowed",
                    stop.len()
                )));
            }
            for (i, s) in stop.iter().enumerate() {
                if s.is_empty() {
                    return Err(WireError::bad_request(format!("`stop[{i}]` is empty")));
                }
                if s.len() > MAX_STOP_BYTES {
                    return Err(WireError::bad_request(format!(
                        "`stop[{i}]` is {} bytes long; at most {MAX_STOP_BYTES} are allowed",
                        s.len()
                    )));
                }
            }
        }
        if let Some(reply_to) = &self.reply_to {
            if reply_to.is_empty() {
                return Err(WireError::bad_request("`reply_to` is empty"));
            }
            check_len("reply_to", Some(reply_to), MAX_REPLY_TO_BYTES)?;
        }
        Ok(())
    }
}

/// A format name or inline text within its length limit; `bad_format` otherwise (its content
/// is the daemon's to check).
fn validate_format(format: Option<&FormatRef>) -> Result<(), WireError> {
    match format {
        Some(FormatRef::Named(n)) if n.is_empty() || n.len() > MAX_FORMAT_NAME_BYTES => {
            Err(WireError::new(
                ErrorCode::BadFormat,
                format!("`format` name must be 1 to {MAX_FORMAT_NAME_BYTES} bytes"),
            ))
        }
        Some(FormatRef::Inline(t)) if t.len() > MAX_FORMAT_BYTES => Err(WireError::new(
            ErrorCode::BadFormat,
            format!(
                "`format` is {} bytes, over the limit of {MAX_FORMAT_BYTES}",
                t.len()
            ),
        )),
        _ => Ok(()),
    }
}

fn validate_messages(messages: &[Message]) -> Result<(), WireError> {
    if messages.is_empty() {
        return Err(WireError::bad_request("`messages` is empty"));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(WireError::bad_request(format!(
            "`messages` has {} entries; at most {MAX_MESSAGES} are allowed",
            messages.len()
        )));
    }
    for (i, m) in messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(WireError::bad_request(format!(
                "`messages[{i}].role` is {:?}; expected \"system\", \"user\" or \"assistant\"",
                truncate_for_message(&m.role)
            )));
        }
        if m.content.is_empty() {
            return Err(WireError::bad_request(format!(
                "`messages[{i}].content` is empty"
            )));
        }
    }
    Ok(())
}

fn check_len(field: &str, value: Option<&str>, max: usize) -> Result<(), WireError> {
    match value {
        Some(v) if v.len() > max => Err(WireError::bad_request(format!(
            "`{field}` is {} bytes long; at most {max} are allowed",
            v.len()
        ))),
        _ => Ok(()),
    }
}

/// `value` must be finite and within `min..=max` (`min` itself excluded when `exclusive_min`).
fn check_float(
    field: &str,
    value: Option<f32>,
    min: f32,
    max: f32,
    exclusive_min: bool,
) -> Result<(), WireError> {
    let Some(v) = value else { return Ok(()) };
    let above_min = if exclusive_min { v > min } else { v >= min };
    if v.is_finite() && above_min && v <= max {
        return Ok(());
    }
    let range = if exclusive_min {
        format!("greater than {min} and at most {max}")
    } else {
        format!("in {min}..={max}")
    };
    let why = if v.is_infinite() {
        " (out of range for a 32-bit float)"
    } else {
        ""
    };
    Err(WireError::bad_request(format!(
        "`{field}` must be a finite number {range}, got {v}{why}"
    )))
}

/// A user-supplied string cut to a length fit for an error message.
fn truncate_for_message(s: &str) -> &str {
    split_utf8(s, 64).next().unwrap_or("")
}
