//! A lexer just deep enough to split a query string into statements and read their leading words without a full
//! parse: it knows string literals ('…', E'…', "…", $tag$…$tag$) and comments (--, nested /* */), so a ';' or a
//! keyword inside them is never mistaken for SQL. This runs on every simple query, so it allocates nothing.
//!
//! Reference: PostgreSQL docs 4.1 "Lexical Structure".

/// Splits `sql` into statements at top-level semicolons; yields each statement's text (trimmed, may be empty).
pub fn statements(sql: &str) -> impl Iterator<Item = &str> {
    let bytes = sql.as_bytes();
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut i = start;
        while i < bytes.len() {
            match bytes[i] {
                b';' => {
                    let s = sql[start..i].trim();
                    start = i + 1;
                    return Some(s);
                }
                _ => i = skip_token(bytes, i),
            }
        }
        done = true;
        let s = sql[start..].trim();
        (!s.is_empty()).then_some(s)
    })
    .filter(|s| !s.is_empty())
}

/// Returns the index just past the literal/comment/character starting at `i`.
fn skip_token(b: &[u8], i: usize) -> usize {
    match b[i] {
        b'\'' => skip_quoted(b, i + 1, b'\''),
        b'"' => skip_quoted(b, i + 1, b'"'),
        b'-' if b.get(i + 1) == Some(&b'-') => b[i..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |p| i + p + 1),
        b'/' if b.get(i + 1) == Some(&b'*') => skip_block_comment(b, i + 2),
        b'$' => skip_dollar(b, i),
        _ => i + 1,
    }
}

fn skip_quoted(b: &[u8], mut i: usize, q: u8) -> usize {
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        // E'' strings may escape quotes with a backslash; treating \' as escaped elsewhere is harmless here.
        if b[i] == b'\\' && q == b'\'' {
            i += 2;
            continue;
        }
        i += 1;
    }
    b.len()
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// `$tag$ ... $tag$` (tag may be empty). A `$1` parameter is not a dollar quote.
fn skip_dollar(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        if j == i + 1 && b[j].is_ascii_digit() {
            return i + 1;
        }
        j += 1;
    }
    if b.get(j) != Some(&b'$') {
        return i + 1;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(b.len(), |p| body + p + tag.len())
}

/// Bytes a word is made of: ASCII letters and digits, `_`, and every byte of a multi-byte character.
const WORD_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
        i += 1;
    }
    t
};

/// Leading words of a statement, skipping whitespace and comments; stops at the first non-word character.
pub struct Words<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Words<'a> {
    pub fn new(s: &'a str) -> Words<'a> {
        Words { s, pos: 0 }
    }

    /// Byte offset of the remaining text, after the words read so far and any whitespace/comments.
    pub fn rest(&mut self) -> &'a str {
        self.skip_space();
        &self.s[self.pos..]
    }

    fn skip_space(&mut self) {
        let b = self.s.as_bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            let at_comment = b.get(self.pos) == Some(&b'-') && b.get(self.pos + 1) == Some(&b'-')
                || b.get(self.pos) == Some(&b'/') && b.get(self.pos + 1) == Some(&b'*');
            if !at_comment {
                return;
            }
            self.pos = skip_token(b, self.pos);
        }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.skip_space();
        let b = self.s.as_bytes();
        let start = self.pos;
        // One table lookup per byte instead of four comparisons: the first word of every statement comes here.
        while self.pos < b.len() && WORD_BYTE[usize::from(b[self.pos])] {
            self.pos += 1;
        }
        (self.pos > start).then(|| &self.s[start..self.pos])
    }
}

/// Case-insensitive search for an ASCII needle outside literals and comments.
pub fn contains_word_ci(sql: &str, needle: &str) -> bool {
    find_ci(sql, needle, 0).is_some()
}

/// The byte offset of the first `needle` (ASCII, case-insensitive) at or after `from`, outside literals and
/// comments.
pub fn find_ci(sql: &str, needle: &str, from: usize) -> Option<usize> {
    let b = sql.as_bytes();
    let n = needle.as_bytes();
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' | b'$' | b'-' | b'/' => {
                let next = skip_token(b, i);
                if next > i + 1 {
                    i = next;
                    continue;
                }
            }
            _ => {}
        }
        if b.len() - i >= n.len() && b[i..i + n.len()].eq_ignore_ascii_case(n) {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let sql = "SET a = 'x;y'; select $$;$$, \"q;\" -- c;\n; /* ; /* ; */ */ BEGIN;; ";
        let v: Vec<_> = statements(sql).collect();
        assert_eq!(
            v,
            vec![
                "SET a = 'x;y'",
                "select $$;$$, \"q;\" -- c;",
                "/* ; /* ; */ */ BEGIN"
            ]
        );
    }

    #[test]
    fn dollar_parameters_are_not_quotes() {
        let v: Vec<_> = statements("select $1; select $2").collect();
        assert_eq!(v, vec!["select $1", "select $2"]);
        let v: Vec<_> = statements("select $f$a;b$f$; x").collect();
        assert_eq!(v, vec!["select $f$a;b$f$", "x"]);
    }

    #[test]
    fn words_skip_comments() {
        let mut w = Words::new("/* hi */ SET -- x\n LOCAL foo.bar TO 1");
        assert_eq!(w.next(), Some("SET"));
        assert_eq!(w.next(), Some("LOCAL"));
        assert_eq!(w.next(), Some("foo"));
        assert_eq!(w.rest(), ".bar TO 1");
    }

    #[test]
    fn finds_words_outside_literals() {
        assert!(contains_word_ci(
            "select PG_ADVISORY_LOCK(1)",
            "pg_advisory_lock"
        ));
        assert!(!contains_word_ci(
            "select 'pg_advisory_lock(1)'",
            "pg_advisory_lock"
        ));
        assert!(!contains_word_ci(
            "select 1 -- pg_advisory_lock",
            "pg_advisory_lock"
        ));
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for s in ["'abc", "\"abc", "/* abc", "$a$ abc", "$", "-", "/", "E'\\"] {
            let _ = statements(s).count();
            let _ = contains_word_ci(s, "x");
        }
    }
}
