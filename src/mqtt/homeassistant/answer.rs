//! The "Answer" sensor: Home Assistant refuses a state over 255 characters, so the state is
//! the answer cut to fit, and the whole answer goes to the JSON attributes. The attributes
//! are published first, so that an automation triggered by the state reads the matching
//! attributes; each carries the request id, so two equal answers are still two updates.

use serde_json::{json, Value};

use super::discovery::MAX_STATE_CHARS;

/// How a Home Assistant request ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome<'a> {
    Answer {
        text: &'a str,
        model: &'a str,
        finish_reason: &'a str,
        prompt_tokens: u32,
        completion_tokens: u32,
        tokens_per_s: f64,
    },
    Error {
        code: &'a str,
        message: &'a str,
    },
}

/// The two retained publishes of one outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerState {
    /// At most [`MAX_STATE_CHARS`] characters.
    pub state: String,
    pub attributes: Value,
}

/// `s` if it has at most 255 characters, else its first 254 and `…` (characters, as Home
/// Assistant counts them, never a cut inside one).
pub fn fit_state(s: &str) -> String {
    match s.char_indices().nth(MAX_STATE_CHARS) {
        None => s.to_owned(),
        Some(_) => {
            let (cut, _) = s
                .char_indices()
                .nth(MAX_STATE_CHARS - 1)
                .expect("longer than that");
            format!("{}…", &s[..cut])
        }
    }
}

/// The state and attributes of request `id`'s outcome. An error's state starts with
/// `error: `, as a plain-text reply's does.
pub fn answer_state(id: &str, o: Outcome<'_>) -> AnswerState {
    match o {
        Outcome::Answer {
            text,
            model,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            tokens_per_s,
        } => AnswerState {
            state: fit_state(text),
            attributes: json!({
                "id": id,
                "text": text,
                "model": model,
                "finish_reason": finish_reason,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "tokens_per_s": (tokens_per_s * 10.0).round() / 10.0,
                "truncated": text.chars().count() > MAX_STATE_CHARS,
            }),
        },
        Outcome::Error { code, message } => AnswerState {
            state: fit_state(&format!("error: {code}: {message}")),
            attributes: json!({
                "id": id,
                "error": {"code": code, "message": message},
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str) -> AnswerState {
        answer_state(
            "ha-1",
            Outcome::Answer {
                text,
                model: "m",
                finish_reason: "stop",
                prompt_tokens: 3,
                completion_tokens: 4,
                tokens_per_s: 12.345,
            },
        )
    }

    #[test]
    fn short_answers_are_the_state_as_they_are() {
        let a = answer("Hello there");
        assert_eq!(a.state, "Hello there");
        assert_eq!(a.attributes["text"], "Hello there");
        assert_eq!(a.attributes["id"], "ha-1");
        assert_eq!(a.attributes["tokens_per_s"], 12.3);
        assert_eq!(a.attributes["truncated"], false);
        let exact = "x".repeat(255);
        assert_eq!(answer(&exact).state, exact);
    }

    #[test]
    fn long_answers_are_cut_to_255_characters_on_character_boundaries() {
        for unit in ["a", "é", "日", "🦙"] {
            let long = unit.repeat(300);
            let a = answer(&long);
            assert_eq!(a.state.chars().count(), 255, "{unit}");
            assert!(a.state.ends_with('…'));
            assert!(long.starts_with(a.state.trim_end_matches('…')));
            assert_eq!(a.attributes["text"], long.as_str());
            assert_eq!(a.attributes["truncated"], true);
        }
        assert_eq!(fit_state(&"b".repeat(256)).chars().count(), 255);
    }

    #[test]
    fn errors_say_so() {
        let e = answer_state(
            "ha-2",
            Outcome::Error {
                code: "busy",
                message: "the queue is full",
            },
        );
        assert_eq!(e.state, "error: busy: the queue is full");
        assert_eq!(e.attributes["error"]["code"], "busy");
        assert_eq!(e.attributes["id"], "ha-2");
        let long = answer_state(
            "ha-3",
            Outcome::Error {
                code: "too_long",
                message: &"m".repeat(400),
            },
        );
        assert_eq!(long.state.chars().count(), 255);
    }
}
