//! Byte-stable YAML for Kubernetes objects.
//!
//! We write our own emitter rather than serialise through a YAML crate because the
//! crates we tried emit `yes`, `on` or `2026-01-01` unquoted. Those are strings in
//! YAML 1.2 but booleans and timestamps to YAML 1.1 readers such as kubectl's, so a
//! ConfigMap value `"yes"` would come back as `true`. Here a string is written plain
//! only when every YAML 1.1 and 1.2 reader reads it back as that same string;
//! otherwise it is quoted. Map keys are always sorted (with `apiVersion`, `kind`,
//! `metadata` first, and `name`, `namespace` first inside metadata), so the same
//! object always renders to the same bytes. The layout follows `kubectl get -o yaml`:
//! two-space indents, and sequences at the indentation of their key.

use serde_json::{Map, Value};

/// Renders a JSON value as a YAML document ending in a newline.
pub(crate) fn render(value: &Value) -> String {
    let mut out = String::with_capacity(1024);
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0, Order::Object, false),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            write_inline(&mut out, scalar, 2);
            out.push('\n');
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Order {
    /// A Kubernetes object: apiVersion, kind, metadata, then the rest sorted.
    Object,
    /// ObjectMeta: name, namespace, then the rest sorted.
    Metadata,
    Sorted,
}

fn rank(order: Order, key: &str) -> u8 {
    match (order, key) {
        (Order::Object, "apiVersion") | (Order::Metadata, "name") => 0,
        (Order::Object, "kind") | (Order::Metadata, "namespace") => 1,
        (Order::Object, "metadata") => 2,
        _ => 3,
    }
}

fn write_map(
    out: &mut String,
    map: &Map<String, Value>,
    indent: usize,
    order: Order,
    inline_first: bool,
) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    // serde_json's map may preserve insertion order when another crate turns on
    // `preserve_order`, so sort here rather than trusting its iteration order.
    entries.sort_by(|(a, _), (b, _)| rank(order, a).cmp(&rank(order, b)).then_with(|| a.cmp(b)));
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 || !inline_first {
            push_indent(out, indent);
        }
        let key_start = out.len();
        write_string(out, key, indent + 2, false);
        // An implicit key may be at most 1024 characters; longer ones are explicit.
        let explicit = out[key_start..].chars().count() > 1000;
        if explicit {
            out.insert_str(key_start, "? ");
            out.push('\n');
            push_indent(out, indent);
        }
        out.push(':');
        let child_order = match (order, key.as_str()) {
            (Order::Object, "metadata") => Order::Metadata,
            _ => Order::Sorted,
        };
        match value {
            Value::Object(child) if !child.is_empty() => {
                out.push('\n');
                write_map(out, child, indent + 2, child_order, false);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                write_seq(out, items, if explicit { indent + 2 } else { indent });
            }
            scalar => {
                out.push(' ');
                write_inline(out, scalar, indent + 2);
                out.push('\n');
            }
        }
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        push_indent(out, indent);
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => {
                write_map(out, map, indent + 2, Order::Sorted, true);
            }
            Value::Array(inner) if !inner.is_empty() => {
                // A nested sequence starts on the next line, one level deeper.
                out.pop();
                out.push('\n');
                write_seq(out, inner, indent + 2);
            }
            scalar => {
                write_inline(out, scalar, indent + 2);
                out.push('\n');
            }
        }
    }
}

fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// Writes a scalar or an empty collection; `content_indent` is where block-scalar lines go.
fn write_inline(out: &mut String, value: &Value, content_indent: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s, content_indent, true),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

fn write_string(out: &mut String, s: &str, content_indent: usize, allow_block: bool) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else if allow_block && fits_literal_block(s) {
        write_literal_block(out, s, content_indent);
    } else if s.chars().all(is_printable) && !s.contains('\n') {
        out.push('\'');
        out.push_str(&s.replace('\'', "''"));
        out.push('\'');
    } else {
        write_double_quoted(out, s);
    }
}

/// YAML's printable set, less the characters a YAML 1.1 reader takes as line
/// breaks (NEL, LS, PS) and the byte-order mark; tabs and newlines are handled by
/// the callers.
fn is_printable(c: char) -> bool {
    matches!(c, ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// True when every YAML 1.1 and 1.2 reader reads `s`, unquoted, as this string.
pub(crate) fn is_plain_safe(s: &str) -> bool {
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._/:@+=,()$% ".contains(&b);
    if !bytes.iter().all(|&b| allowed(b))
        || s.ends_with(' ')
        || s.ends_with(':')
        || s.contains(": ")
    {
        return false;
    }
    if first.is_ascii_alphabetic() || first == b'/' || first == b'_' {
        // YAML 1.1 booleans and nulls in every spelling.
        let lower = s.to_ascii_lowercase();
        return !matches!(
            lower.as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    }
    if first == b'.' {
        let lower = s.to_ascii_lowercase();
        return bytes.get(1).is_some_and(u8::is_ascii_alphabetic)
            && !matches!(lower.as_str(), ".inf" | ".nan");
    }
    if first.is_ascii_digit() {
        // Numbers (hex, octal, sexagesimal, underscores) and timestamps need quotes; a
        // quantity such as `10Gi` or `100m` has a letter no number could contain.
        let looks_like_date =
            bytes.len() >= 5 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-';
        let has_non_numeric = bytes
            .iter()
            .any(|b| !(b.is_ascii_hexdigit() || b"xXoO+-._: ".contains(b)));
        return has_non_numeric && !looks_like_date;
    }
    false
}

fn fits_literal_block(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\t', '\n'])
        && s.chars().all(|c| c == '\n' || c == '\t' || is_printable(c))
}

fn write_literal_block(out: &mut String, s: &str, indent: usize) {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    out.push_str(match trailing {
        0 => "|-",
        1 => "|",
        _ => "|+",
    });
    let mut lines: Vec<&str> = body.split('\n').collect();
    // Keep-chomping: each newline past the first is an empty line.
    lines.extend(std::iter::repeat_n("", trailing.saturating_sub(1)));
    for line in lines {
        out.push('\n');
        if !line.is_empty() {
            push_indent(out, indent);
            out.push_str(line);
        }
    }
}

fn write_double_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if !is_printable(c) => {
                let code = c as u32;
                if code <= 0xffff {
                    out.push_str(&format!("\\u{code:04x}"));
                } else {
                    out.push_str(&format!("\\U{code:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn roundtrip(value: &Value) -> Value {
        let text = render(value);
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn yaml_11_lookalikes_are_quoted() {
        for s in [
            "yes",
            "No",
            "ON",
            "off",
            "y",
            "N",
            "true",
            "null",
            "~",
            "0755",
            "1e3",
            "0x1F",
            "12:30",
            "2026-01-01",
            "1_000",
            ".inf",
            ".NaN",
            "",
            " x",
            "x ",
            "#c",
            "- x",
            "a: b",
            "a:",
            "*ref",
            "&a",
            "!tag",
            "%x",
            "@x",
            "`x`",
            "[x]",
            "{x}",
            "'x'",
            "\"x\"",
            "<<",
            "1.27.3",
            "+1",
            "-1",
            "3",
        ] {
            let text = render(&json!({ "k": s }));
            assert_ne!(text, format!("k: {s}\n"), "{s:?} must be quoted");
            assert_eq!(roundtrip(&json!({ "k": s })), json!({ "k": s }), "{text}");
        }
    }

    #[test]
    fn ordinary_values_stay_plain() {
        for s in [
            "nginx:1.27",
            "web",
            "10Gi",
            "100m",
            "app.kubernetes.io/name",
            "v1",
            "/usr/bin/x",
            "a b",
            "8080/TCP",
            ".dockerconfigjson",
            "25%",
        ] {
            assert_eq!(render(&json!({ "k": s })), format!("k: {s}\n"));
        }
    }

    #[test]
    fn object_keys_come_in_kubernetes_order() {
        let value = json!({
            "data": {"b": "2", "a": "1"},
            "metadata": {"labels": {"x": "z"}, "namespace": "ns", "name": "cm"},
            "kind": "ConfigMap",
            "apiVersion": "v1",
        });
        assert_eq!(
            render(&value),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n  namespace: ns\n  labels:\n    x: z\ndata:\n  a: '1'\n  b: '2'\n"
        );
    }

    #[test]
    fn sequences_sit_at_their_keys_indentation() {
        let value = json!({"spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}], "args": [["a"], []]}});
        assert_eq!(
            render(&value),
            "spec:\n  args:\n  -\n    - a\n  - []\n  containers:\n  - image: nginx\n    name: web\n    ports:\n    - containerPort: 80\n"
        );
        assert_eq!(roundtrip(&value), value);
    }

    #[test]
    fn multi_line_strings_use_literal_blocks_and_keep_their_newlines() {
        for s in [
            "a\nb",
            "a\nb\n",
            "a\nb\n\n\n",
            "line\n  indented\n\nlast",
            "a\n\tb",
        ] {
            let value = json!({"data": {"file": s}, "list": [s]});
            let text = render(&value);
            assert!(text.contains("file: |"), "{text}");
            assert_eq!(roundtrip(&value), value, "{text}");
        }
    }

    #[test]
    fn odd_strings_survive_a_round_trip() {
        for s in [
            "\r\n",
            "tab\there",
            "bell\u{7}",
            "nel\u{85}x",
            "ls\u{2028}",
            "it's",
            "ünïcödé",
            "\u{1F600}",
            " lead\nx",
            "\nfirst",
            "back\\slash\"quote",
        ] {
            let value = json!({ s: s });
            assert_eq!(roundtrip(&value), value, "{}", render(&value));
        }
    }

    #[test]
    fn non_characters_and_huge_keys_still_make_valid_yaml() {
        let long = "k".repeat(1500);
        let value = json!({
            "a": "\u{fffe}x\u{ffff}",
            "b": "line\n\u{ffff}\n",
            long.clone(): {"nested": [1, {"x": "y"}]},
            format!("{long}2"): ["a", "b"],
            format!("{long}3"): "scalar",
        });
        let text = render(&value);
        assert!(text.contains("? "), "{text}");
        assert_eq!(roundtrip(&value), value, "{text}");
    }

    #[test]
    fn scalars_and_empty_collections_render_inline() {
        let value = json!({"a": null, "b": true, "c": 1.5, "d": -3, "e": {}, "f": [], "g": 18446744073709551615u64});
        assert_eq!(
            render(&value),
            "a: null\nb: true\nc: 1.5\nd: -3\ne: {}\nf: []\ng: 18446744073709551615\n"
        );
        assert_eq!(roundtrip(&value), value);
    }
}
