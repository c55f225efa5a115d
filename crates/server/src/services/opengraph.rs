//! Just enough HTML reading for a link preview: the page's `<title>` and its
//! `<meta property="og:…" content="…">` tags (and `<meta name="description">`
//! as a fallback), from a page that may be malformed, hostile or cut off
//! anywhere. One linear pass, no tree, no recursion: every loop advances.

use serde_json::{Map, Value};

/// Most OpenGraph keys kept from one page.
const MAX_KEYS: usize = 50;
/// Longest value kept, in characters.
const MAX_VALUE_CHARS: usize = 1000;
/// Longest description kept, in characters.
const MAX_DESCRIPTION_CHARS: usize = 500;

/// What a page says about itself.
#[derive(Debug, Default, PartialEq)]
pub struct PageMeta {
    /// `og:*` properties, the first value of each.
    pub og: Map<String, Value>,
    pub title: Option<String>,
    /// `<meta name="description">`.
    pub description: Option<String>,
}

impl PageMeta {
    /// The OpenGraph object: the page's `og:` properties, with `og:title` and
    /// `og:description` taken from `<title>` and the description meta tag
    /// when the page has none.
    pub fn into_opengraph(self) -> Map<String, Value> {
        let mut og = self.og;
        if let Some(t) = self.title.filter(|_| !og.contains_key("og:title")) {
            og.insert("og:title".into(), t.into());
        }
        if let Some(d) = self.description.filter(|_| !og.contains_key("og:description")) {
            og.insert("og:description".into(), d.into());
        }
        og
    }
}

/// Reads the title and the meta tags of an HTML document.
pub fn parse(html: &str) -> PageMeta {
    // ASCII lowercasing keeps every byte offset: `lower` is searched, `html` is read.
    let lower = html.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut meta = PageMeta::default();
    let mut i = 0;
    while let Some(off) = lower[i..].find('<') {
        let start = i + off;
        let rest = &lower[start..];
        if rest.starts_with("<!--") {
            i = lower[start + 4..]
                .find("-->")
                .map_or(lower.len(), |e| start + 4 + e + 3);
            continue;
        }
        if rest.starts_with("</") || rest.starts_with("<!") || rest.starts_with("<?") {
            i = lower[start..].find('>').map_or(lower.len(), |e| start + e + 1);
            continue;
        }
        let name_end = start
            + 1
            + bytes[start + 1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
        if name_end == start + 1 {
            // A `<` that opens no tag is text.
            i = start + 1;
            continue;
        }
        let name = &lower[start + 1..name_end];
        let (attrs, end) = attributes(html, &lower, name_end);
        i = end;
        match name {
            "meta" => meta_tag(&mut meta, &attrs),
            "title" => {
                let close = lower[i..].find("</title").map_or(lower.len(), |e| i + e);
                if meta.title.is_none() {
                    meta.title = Some(clean(&html[i..close], MAX_VALUE_CHARS)).filter(|t| !t.is_empty());
                }
                i = close;
            }
            // Raw text: a `<meta` inside a script is not a tag.
            "script" | "style" | "textarea" | "template" | "noscript" => {
                let closing = format!("</{name}");
                i = lower[i..].find(&closing).map_or(lower.len(), |e| i + e);
            }
            _ => {}
        }
    }
    meta
}

fn meta_tag(meta: &mut PageMeta, attrs: &[(String, String)]) {
    let get = |key: &str| attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let Some(content) = get("content") else { return };
    // Some sites write OpenGraph properties as `name=`.
    let key = get("property")
        .or_else(|| get("name"))
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if key == "description" {
        if meta.description.is_none() {
            meta.description = Some(clean(content, MAX_DESCRIPTION_CHARS)).filter(|d| !d.is_empty());
        }
        return;
    }
    let valid_key = key.len() <= 64
        && key
            .strip_prefix("og:")
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b":_-.".contains(&b)));
    if !valid_key || meta.og.contains_key(&key) || meta.og.len() >= MAX_KEYS {
        return;
    }
    let limit = if key == "og:description" {
        MAX_DESCRIPTION_CHARS
    } else {
        MAX_VALUE_CHARS
    };
    let value = clean(content, limit);
    if !value.is_empty() {
        meta.og.insert(key, value.into());
    }
}

/// The attributes of the tag whose name ends at `pos`, names lowercased and
/// values with their entities decoded, and where the tag ends.
fn attributes(html: &str, lower: &str, mut pos: usize) -> (Vec<(String, String)>, usize) {
    let b = lower.as_bytes();
    let mut attrs = Vec::new();
    loop {
        while pos < b.len() && (b[pos].is_ascii_whitespace() || b[pos] == b'/') {
            pos += 1;
        }
        if pos >= b.len() {
            return (attrs, pos);
        }
        if b[pos] == b'>' {
            return (attrs, pos + 1);
        }
        let name_start = pos;
        while pos < b.len() && !b[pos].is_ascii_whitespace() && !b"=>/".contains(&b[pos]) {
            pos += 1;
        }
        if pos == name_start {
            // A stray `=`: skip it.
            pos += 1;
            continue;
        }
        let name = lower[name_start..pos].to_owned();
        let mut p = pos;
        while p < b.len() && b[p].is_ascii_whitespace() {
            p += 1;
        }
        let mut value = String::new();
        if p < b.len() && b[p] == b'=' {
            p += 1;
            while p < b.len() && b[p].is_ascii_whitespace() {
                p += 1;
            }
            if p < b.len() && (b[p] == b'"' || b[p] == b'\'') {
                let quote = b[p] as char;
                let v_start = p + 1;
                let v_end = lower[v_start..].find(quote).map_or(lower.len(), |e| v_start + e);
                value = decode_entities(&html[v_start..v_end]);
                p = (v_end + 1).min(b.len());
            } else {
                let v_start = p;
                while p < b.len() && !b[p].is_ascii_whitespace() && b[p] != b'>' {
                    p += 1;
                }
                value = decode_entities(&html[v_start..p]);
            }
            pos = p;
        }
        if attrs.len() < 32 {
            attrs.push((name, value));
        }
    }
}

/// Entities decoded, whitespace collapsed, at most `limit` characters.
fn clean(s: &str, limit: usize) -> String {
    let decoded = decode_entities(s);
    let mut out = String::new();
    for (n, word) in decoded.split_whitespace().enumerate() {
        if n > 0 {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() > limit * 4 {
            break;
        }
    }
    match out.char_indices().nth(limit) {
        Some((cut, _)) => {
            out.truncate(cut);
            out.push('…');
            out
        }
        None => out,
    }
}

/// The character references a title or a meta tag uses in practice:
/// numeric ones and the few named ones. Others are left as written.
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest[1..].find(';').filter(|&semi| semi <= 10).and_then(|semi| {
            let name = &rest[1..1 + semi];
            let c = if let Some(num) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                u32::from_str_radix(num, 16).ok().and_then(char::from_u32)
            } else if let Some(num) = name.strip_prefix('#') {
                num.parse().ok().and_then(char::from_u32)
            } else {
                match name {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    "nbsp" => Some('\u{a0}'),
                    _ => None,
                }
            };
            c.filter(|c| *c != '\0').map(|c| (c, semi + 2))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_opengraph_and_title() {
        let m = parse(
            r#"<!DOCTYPE html><html><head>
            <title>  Le   site &amp; co </title>
            <META Property="og:title" CONTENT='Bonjour "monde"'>
            <meta property="og:description" content="Un &lt;b&gt;test&#x21; &#233;t&eacute;">
            <meta property=og:url content=https://example.org/a>
            <meta property="og:title" content="second title ignored">
            <meta name="description" content="plain description">
            </head><body></body></html>"#,
        );
        assert_eq!(m.title.as_deref(), Some("Le site & co"));
        assert_eq!(m.og["og:title"], "Bonjour \"monde\"");
        assert_eq!(m.og["og:description"], "Un <b>test! ét&eacute;");
        assert_eq!(m.og["og:url"], "https://example.org/a");
        assert_eq!(m.description.as_deref(), Some("plain description"));
    }

    #[test]
    fn title_and_description_fall_back() {
        let og = parse("<title>T</title><meta name=description content=D>").into_opengraph();
        assert_eq!(og["og:title"], "T");
        assert_eq!(og["og:description"], "D");
    }

    #[test]
    fn ignores_comments_scripts_and_junk() {
        let m = parse(
            "<!-- <meta property=\"og:title\" content=\"no\"> --><script>var s = '<meta property=\"og:title\" \
             content=\"no\">';</script><meta property=\"og:image\" content=\"/i.png\"><meta property=\"og:\" \
             content=\"x\"><meta property=\"og:bad key\" content=\"x\"><meta property=\"twitter:card\" content=\"x\">",
        );
        assert!(!m.og.contains_key("og:title"));
        assert_eq!(m.og["og:image"], "/i.png");
        assert_eq!(m.og.len(), 1);
    }

    #[test]
    fn survives_truncation_anywhere() {
        let page = "<html><head><title>Tïtle</title><meta property=\"og:title\" content=\"Wörld\"></head>";
        for cut in (0..=page.len()).filter(|&c| page.is_char_boundary(c)) {
            parse(&page[..cut]);
        }
        for junk in [
            "<",
            "<<<",
            "<meta",
            "<meta property",
            "<meta =",
            "< a",
            "&#xffffffff;",
            "&#0;",
            "<title>",
        ] {
            parse(junk);
        }
        assert_eq!(parse("<meta property=\"og:title\" content=\"un").og["og:title"], "un");
    }

    #[test]
    fn long_values_are_cut() {
        let long = "é".repeat(5000);
        let m = parse(&format!("<meta property=\"og:description\" content=\"{long}\">"));
        let d = m.og["og:description"].as_str().unwrap();
        assert_eq!(d.chars().count(), MAX_DESCRIPTION_CHARS + 1);
    }
}
