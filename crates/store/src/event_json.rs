//! Reading fields of stored event JSON, in Rust rather than in SQL: the
//! JSON functions of PostgreSQL refuse any string holding `\u0000`, which
//! is valid JSON and which SQLite reads, so SQL never parses event JSON
//! and both engines answer alike.

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct WithContent<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// The `content` of an event, as JSON text.
pub(crate) fn content(event_json: &str) -> Option<String> {
    let e: WithContent<'_> = serde_json::from_str(event_json).ok()?;
    Some(e.content?.get().to_owned())
}

/// A string field of an event's `content` (`membership`, `join_rule`);
/// `None` when absent or not a string.
pub(crate) fn content_str(event_json: &str, key: &str) -> Option<String> {
    let e: WithContent<'_> = serde_json::from_str(event_json).ok()?;
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(e.content?.get()).ok()?;
    fields.get(key)?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #[test]
    fn nul_escapes_are_just_text() {
        let json = r#"{"type":"m.room.member","content":{"membership":"leave","reason":"bye\u0000"}}"#;
        assert_eq!(super::content_str(json, "membership").as_deref(), Some("leave"));
        assert!(super::content(json).unwrap().contains(r"bye\u0000"));
        assert_eq!(
            super::content_str(r#"{"content":{"membership":5}}"#, "membership"),
            None
        );
    }
}
