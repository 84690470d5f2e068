//! The topic tree of one daemon and the reply-topic security rule. Pure string logic.
//!
//! | Purpose | Topic |
//! |---|---|
//! | Requests (text/JSON; postcard by MQTT 5 content type) | `{prefix}/prompt/{device}` |
//! | Requests in postcard for MQTT 3.1.1 clients | `{prefix}/pc/prompt/{device}` |
//! | Requests to one model (MQTT 3.1.1 clients have no other way to choose) | `{prefix}/model/{model}/prompt/{device}` |
//! | The same in postcard | `{prefix}/model/{model}/pc/prompt/{device}` |
//! | Requests whose reply follows the configured format `{name}` (any encoding; the way for plain text) | `{prefix}/format/{name}/prompt/{device}` |
//! | The same in postcard | `{prefix}/format/{name}/pc/prompt/{device}` |
//! | Default replies | `{prefix}/reply/{device}` |
//! | Cancel (payload: the request id) | `{prefix}/cancel/{device}` |
//! | Node status (retained) | `{prefix}/status/{node}` |

/// Whether `s` is one non-empty topic level without wildcards or separators.
pub fn is_topic_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

/// A topic prefix: non-empty levels, no wildcards, not a `$` topic, no leading/trailing `/`.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".into());
    }
    if prefix.contains(['+', '#', '\0']) {
        return Err(format!("`{prefix}` must not contain '+' or '#'"));
    }
    if prefix.starts_with('$') {
        return Err(format!("`{prefix}` must not start with '$'"));
    }
    if prefix.split('/').any(str::is_empty) {
        return Err(format!(
            "`{prefix}` has an empty level (leading, trailing or double '/')"
        ));
    }
    Ok(())
}

/// A valid MQTT topic filter: `#` only as the whole last level, `+` only as a whole level.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("empty filter".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("'#' must be the whole last level".into());
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level".into());
        }
    }
    Ok(())
}

/// MQTT filter matching (`+` one level, `#` this level and everything below). A topic starting
/// with `$` never matches a filter starting with a wildcard (MQTT 5 §4.7.2).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Why a reply topic was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyTopicError {
    #[error("reply topic is empty")]
    Empty,
    #[error("reply topic `{0}` contains a wildcard")]
    Wildcard(String),
    #[error("reply topic `{0}` is a `$` topic")]
    Dollar(String),
    #[error("reply topic `{0}` is outside the allowed prefixes")]
    NotAllowed(String),
}

/// The security rule: a reply topic must be a concrete topic (no `+`/`#`, not `$...`) that
/// matches one of `allowed` (MQTT filters). A requester thus cannot make the daemon publish on
/// another device's command topics.
pub fn check_reply_topic(topic: &str, allowed: &[String]) -> Result<(), ReplyTopicError> {
    if topic.is_empty() {
        return Err(ReplyTopicError::Empty);
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(ReplyTopicError::Wildcard(topic.to_owned()));
    }
    if topic.starts_with('$') {
        return Err(ReplyTopicError::Dollar(topic.to_owned()));
    }
    if allowed.iter().any(|f| filter_matches(f, topic)) {
        Ok(())
    } else {
        Err(ReplyTopicError::NotAllowed(topic.to_owned()))
    }
}

/// What kind of message arrived, from its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A request on `{prefix}/prompt/{device}`, on `{prefix}/model/{model}/prompt/{device}`
    /// (`model` set) or on `{prefix}/format/{name}/prompt/{device}` (`format` set); `postcard`
    /// when it came on the postcard form.
    Prompt {
        device: &'a str,
        postcard: bool,
        model: Option<&'a str>,
        format: Option<&'a str>,
    },
    /// `{prefix}/cancel/{device}`.
    Cancel { device: &'a str },
}

/// The topics of one daemon.
#[derive(Clone, Debug)]
pub struct Topics {
    prefix: String,
    share_group: Option<String>,
    /// The served models, each subscribed on its own topic.
    models: Vec<String>,
}

impl Topics {
    pub fn new(prefix: &str, share_group: Option<&str>) -> Topics {
        Topics {
            prefix: prefix.to_owned(),
            share_group: share_group.map(str::to_owned),
            models: Vec::new(),
        }
    }

    /// Sets the served models (at start and after a reload).
    pub fn set_models(&mut self, names: &[&str]) {
        self.models = names.iter().map(|n| (*n).to_owned()).collect();
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The filters to subscribe to: prompts (both forms, through `$share/{group}/` when a
    /// share group is set), then cancels (never shared: every daemon must see a cancel, since
    /// only the one running the job knows it).
    pub fn subscriptions(&self) -> Vec<String> {
        let mut all = self.prompt_subscriptions();
        all.push(format!("{}/cancel/+", self.prefix));
        all
    }

    /// The prompt filters only (unsubscribed first on shutdown): the common ones, then each
    /// model's. A model is subscribed by name, not by wildcard, so that in a share group the
    /// broker hands a model's requests only to the boards that serve it.
    pub fn prompt_subscriptions(&self) -> Vec<String> {
        let mut all = vec![
            self.shared(format!("{}/prompt/+", self.prefix)),
            self.shared(format!("{}/pc/prompt/+", self.prefix)),
            // Any name: an unknown one gets a `bad_format` answer rather than silence.
            self.shared(format!("{}/format/+/prompt/+", self.prefix)),
            self.shared(format!("{}/format/+/pc/prompt/+", self.prefix)),
        ];
        for m in &self.models {
            all.extend(self.model_subscriptions(m));
        }
        all
    }

    /// The prompt filters of one model.
    pub fn model_subscriptions(&self, model: &str) -> Vec<String> {
        vec![
            self.shared(format!("{}/model/{model}/prompt/+", self.prefix)),
            self.shared(format!("{}/model/{model}/pc/prompt/+", self.prefix)),
        ]
    }

    fn shared(&self, filter: String) -> String {
        match &self.share_group {
            Some(g) => format!("$share/{g}/{filter}"),
            None => filter,
        }
    }

    pub fn prompt(&self, device: &str) -> String {
        format!("{}/prompt/{device}", self.prefix)
    }

    pub fn postcard_prompt(&self, device: &str) -> String {
        format!("{}/pc/prompt/{device}", self.prefix)
    }

    pub fn model_prompt(&self, model: &str, device: &str) -> String {
        format!("{}/model/{model}/prompt/{device}", self.prefix)
    }

    pub fn model_postcard_prompt(&self, model: &str, device: &str) -> String {
        format!("{}/model/{model}/pc/prompt/{device}", self.prefix)
    }

    pub fn format_prompt(&self, format: &str, device: &str) -> String {
        format!("{}/format/{format}/prompt/{device}", self.prefix)
    }

    pub fn format_postcard_prompt(&self, format: &str, device: &str) -> String {
        format!("{}/format/{format}/pc/prompt/{device}", self.prefix)
    }

    pub fn reply(&self, device: &str) -> String {
        format!("{}/reply/{device}", self.prefix)
    }

    pub fn cancel(&self, device: &str) -> String {
        format!("{}/cancel/{device}", self.prefix)
    }

    pub fn status(&self, node: &str) -> String {
        format!("{}/status/{node}", self.prefix)
    }

    /// Classifies an incoming topic; `None` for anything else.
    pub fn classify<'a>(&self, topic: &'a str) -> Option<Incoming<'a>> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?;
        let level = |s: &'a str| is_topic_level(s).then_some(s);
        // `model/{model}/` then the same forms as without it. Any model name is classified;
        // whether it is served is the caller's question (`unknown_model`).
        let (model, rest) = match rest.strip_prefix("model/") {
            Some(r) => {
                let (m, r) = r.split_once('/')?;
                (Some(level(m)?), r)
            }
            None => (None, rest),
        };
        // `format/{name}/` likewise (not combined with `model/`).
        let (format, rest) = match rest.strip_prefix("format/") {
            Some(r) if model.is_none() => {
                let (f, r) = r.split_once('/')?;
                (Some(level(f)?), r)
            }
            _ => (None, rest),
        };
        if let Some(d) = rest.strip_prefix("prompt/") {
            return level(d).map(|device| Incoming::Prompt {
                device,
                postcard: false,
                model,
                format,
            });
        }
        if let Some(d) = rest.strip_prefix("pc/prompt/") {
            return level(d).map(|device| Incoming::Prompt {
                device,
                postcard: true,
                model,
                format,
            });
        }
        if model.is_some() || format.is_some() {
            return None;
        }
        if let Some(d) = rest.strip_prefix("cancel/") {
            return level(d).map(|device| Incoming::Cancel { device });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(filter_matches("llamabus/reply/#", "llamabus/reply/x"));
        assert!(filter_matches("llamabus/reply/#", "llamabus/reply/x/y"));
        assert!(filter_matches("llamabus/reply/#", "llamabus/reply"));
        assert!(!filter_matches("llamabus/reply/#", "llamabus/replyx"));
        assert!(!filter_matches("llamabus/reply/#", "llamabus/cmd/x"));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b+").is_err());
        assert!(check_filter("a/+/#").is_ok());
    }

    #[test]
    fn reply_topic_rule() {
        let allowed = vec!["llamabus/reply/#".to_owned()];
        assert!(check_reply_topic("llamabus/reply/dev", &allowed).is_ok());
        assert_eq!(
            check_reply_topic("llamabus/reply/+", &allowed),
            Err(ReplyTopicError::Wildcard("llamabus/reply/+".into()))
        );
        assert!(matches!(
            check_reply_topic("$SYS/x", &["#".into()]),
            Err(ReplyTopicError::Dollar(_))
        ));
        assert!(matches!(
            check_reply_topic("devices/lamp/cmd", &allowed),
            Err(ReplyTopicError::NotAllowed(_))
        ));
        assert!(check_reply_topic("", &allowed).is_err());
    }

    #[test]
    fn classify_and_subscriptions() {
        let t = Topics::new("lb/x", Some("g"));
        assert_eq!(
            t.classify("lb/x/prompt/dev"),
            Some(Incoming::Prompt {
                device: "dev",
                postcard: false,
                model: None,
                format: None
            })
        );
        assert_eq!(
            t.classify("lb/x/pc/prompt/d"),
            Some(Incoming::Prompt {
                device: "d",
                postcard: true,
                model: None,
                format: None
            })
        );
        assert_eq!(
            t.classify("lb/x/model/tiny/prompt/d"),
            Some(Incoming::Prompt {
                device: "d",
                postcard: false,
                model: Some("tiny"),
                format: None
            })
        );
        assert_eq!(
            t.classify("lb/x/model/tiny/pc/prompt/d"),
            Some(Incoming::Prompt {
                device: "d",
                postcard: true,
                model: Some("tiny"),
                format: None
            })
        );
        assert_eq!(
            t.classify("lb/x/format/light/prompt/d"),
            Some(Incoming::Prompt {
                device: "d",
                postcard: false,
                model: None,
                format: Some("light")
            })
        );
        assert_eq!(
            t.classify("lb/x/format/light/pc/prompt/d"),
            Some(Incoming::Prompt {
                device: "d",
                postcard: true,
                model: None,
                format: Some("light")
            })
        );
        assert_eq!(t.classify("lb/x/format/light/cancel/d"), None);
        assert_eq!(t.classify("lb/x/format//prompt/d"), None);
        assert_eq!(t.classify("lb/x/model/m/format/light/prompt/d"), None);
        assert_eq!(t.format_prompt("light", "d"), "lb/x/format/light/prompt/d");
        assert_eq!(t.classify("lb/x/model/tiny/cancel/d"), None);
        assert_eq!(t.classify("lb/x/model//prompt/d"), None);
        assert_eq!(t.classify("lb/x/model/tiny/prompt/d/e"), None);
        assert_eq!(t.classify("lb/x/model/tiny"), None);
        assert_eq!(
            t.classify("lb/x/cancel/d"),
            Some(Incoming::Cancel { device: "d" })
        );
        assert_eq!(t.classify("lb/x/prompt/a/b"), None);
        assert_eq!(t.classify("lb/xprompt/a"), None);
        assert_eq!(
            t.subscriptions(),
            vec![
                "$share/g/lb/x/prompt/+",
                "$share/g/lb/x/pc/prompt/+",
                "$share/g/lb/x/format/+/prompt/+",
                "$share/g/lb/x/format/+/pc/prompt/+",
                "lb/x/cancel/+"
            ]
        );
        let mut t = Topics::new("lb", None);
        t.set_models(&["a", "b"]);
        assert_eq!(
            t.subscriptions(),
            vec![
                "lb/prompt/+",
                "lb/pc/prompt/+",
                "lb/format/+/prompt/+",
                "lb/format/+/pc/prompt/+",
                "lb/model/a/prompt/+",
                "lb/model/a/pc/prompt/+",
                "lb/model/b/prompt/+",
                "lb/model/b/pc/prompt/+",
                "lb/cancel/+"
            ]
        );
        assert_eq!(t.model_prompt("a", "d"), "lb/model/a/prompt/d");
    }
}
