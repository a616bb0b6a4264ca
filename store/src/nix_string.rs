//! Nix string literals: any text as a double-quoted Nix string that evaluates to exactly
//! that text — quotes, backslashes and `$` escaped (so `${` never interpolates), control
//! characters as escapes — for expressions and files tailcache writes for Nix to read.

/// `s` as a Nix string literal, quotes included.
pub fn nix_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::nix_string;

    #[test]
    fn nothing_escapes_the_literal() {
        assert_eq!(nix_string(r#"a"b\c${d}"#), r#""a\"b\\c\${d}""#);
        assert_eq!(nix_string("x\ny\tz"), r#""x\ny\tz""#);
        assert_eq!(nix_string(""), r#""""#);
    }
}
