//! Discovery ids. Home Assistant accepts only `[a-zA-Z0-9_-]` in the node and object levels
//! of a discovery topic (its `TOPIC_MATCHER`); a node name may hold any other character a
//! topic level allows (`.`, spaces, UTF-8), so ids are sanitised, never rejected.

/// `s` with every character outside `[a-zA-Z0-9_-]` replaced by `_` (one per character, so
/// the length in characters is kept); `_` when `s` is empty.
pub fn sanitize(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether `s` is a valid discovery id: non-empty, only `[a-zA-Z0-9_-]`.
pub fn is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The discovery node id, also the device identifier: `llamabus_{node}`.
pub fn node_id(node: &str) -> String {
    format!("llamabus_{}", sanitize(node))
}

/// The `unique_id` of one entity of the node: `llamabus_{node}_{object}`.
pub fn unique_id(node: &str, object: &str) -> String {
    format!("{}_{}", node_id(node), sanitize(object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitised_ids_use_only_the_allowed_characters() {
        assert_eq!(sanitize("kitchen-pi_2"), "kitchen-pi_2");
        assert_eq!(sanitize("kitchen.local"), "kitchen_local");
        assert_eq!(sanitize("küche 1"), "k_che_1");
        assert_eq!(sanitize("$SYS"), "_SYS");
        assert_eq!(sanitize(""), "_");
        for raw in ["a.b", "ü", " ", "x/y", "+#", "日本", "", "ok-1_2"] {
            assert!(is_valid(&sanitize(raw)), "{raw:?} -> {:?}", sanitize(raw));
        }
        assert!(!is_valid(""));
        assert!(!is_valid("a.b"));
        assert_eq!(node_id("pi.lan"), "llamabus_pi_lan");
        assert_eq!(unique_id("pi.lan", "ask"), "llamabus_pi_lan_ask");
    }
}
