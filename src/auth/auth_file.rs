//! `auth_file`: users and their secrets in PgBouncer's `userlist.txt` format, so an existing file (or one generated
//! from `pg_authid`) works unchanged. One user per line: `"name" "secret"`, each field in double quotes with a
//! doubled quote (`""`) standing for one, anything after the second field ignored (PgBouncer ignores it too). The
//! secret is a plain password, an md5 hash (`md5` + 32 hex digits) or a SCRAM verifier, classified as Postgres
//! classifies `pg_authid.rolpassword`. Blank lines and lines starting with `;` or `#` are skipped.
//!
//! Unlike PgBouncer, which skips a line it cannot read, every malformed line is reported with its number and the
//! file is refused: a half-loaded user list would lock out exactly the users whose lines are broken.

use std::collections::BTreeMap;

use super::StoredSecret;

/// One problem in the file, with its 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct AuthFileError {
    pub line: usize,
    pub message: String,
}

/// Refuses absurd files before reading them into memory line by line; a user list is small.
pub const MAX_AUTH_FILE_BYTES: u64 = 64 << 20;

/// Parses the whole file: user name -> secret text (checked to classify cleanly). Every problem is returned.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, Vec<AuthFileError>> {
    let mut users = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed) {
            Ok((name, secret)) => match users.entry(name) {
                std::collections::btree_map::Entry::Occupied(e) => errors.push(AuthFileError {
                    line,
                    message: format!("user {:?} is listed twice", e.key()),
                }),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(secret);
                }
            },
            Err(message) => errors.push(AuthFileError { line, message }),
        }
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        Err(errors)
    }
}

fn parse_line(line: &str) -> Result<(String, String), String> {
    let (name, rest) = quoted(line).map_err(|e| format!("user name: {e}"))?;
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Err("expected a second quoted field (the password or secret)".into());
    }
    let (secret, _ignored) = quoted(rest).map_err(|e| format!("secret: {e}"))?;
    if name.is_empty() {
        return Err("the user name is empty".into());
    }
    if secret.is_empty() {
        return Err(format!("user {name:?} has an empty secret"));
    }
    if let Err(e) = StoredSecret::try_parse(&secret) {
        return Err(format!("user {name:?}: {e}"));
    }
    Ok((name, secret))
}

/// One `"..."` field with `""` escapes, and what follows its closing quote.
fn quoted(s: &str) -> Result<(String, &str), &'static str> {
    let body = s
        .strip_prefix('"')
        .ok_or("expected a field in double quotes")?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        // `"` is one byte, so `i + 1` is a char boundary.
        let after = &body[i + 1..];
        if after.starts_with('"') {
            out.push('"');
            chars.next();
            continue;
        }
        return Ok((out, after));
    }
    Err("missing closing double quote")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAM: &str = "SCRAM-SHA-256$4096:46nmVQNGxalovOsGPtc6dg==$46yOesf+5EkHD8wJ0fmVjlDXJ8xCkO9ctA5dWpoqeGU=:lz68xDMRtSMiwU1Lmn4BK3byPiILKxhpMqHxDpH9jqM=";

    #[test]
    fn reads_pgbouncer_userlists() {
        let text = format!(
            "; generated\n\
             # another comment\n\
             \n\
             \"plain\" \"secret\"\n\
             \"hashed\" \"md52aea419619857e8a27f0f7aa641db0c6\" \"\" extra fields ignored\n\
             \"scram\"  \"{SCRAM}\"\n\
             \"we\"\"ird user\" \"pass \"\"word\"\"\"\n\
             \t \"café\"\t\"ünï\"\r\n"
        );
        let users = parse(&text).unwrap();
        assert_eq!(users.len(), 5);
        assert_eq!(users["plain"], "secret");
        assert!(matches!(
            StoredSecret::parse(&users["hashed"]),
            StoredSecret::Md5(_)
        ));
        assert!(matches!(
            StoredSecret::parse(&users["scram"]),
            StoredSecret::Scram(_)
        ));
        assert_eq!(users["we\"ird user"], "pass \"word\"");
        assert_eq!(users["café"], "ünï");
    }

    #[test]
    fn every_malformed_line_is_reported_with_its_number() {
        let text = "\"ok\" \"pw\"\n\
                    plain pw\n\
                    \"unterminated pw\n\
                    \"onlyname\"\n\
                    \"name\" secret\n\
                    \"\" \"pw\"\n\
                    \"empty\" \"\"\n\
                    \"ok\" \"again\"\n\
                    \"badscram\" \"SCRAM-SHA-256$4096:abc\"\n\
                    \"open\" \"pw\n";
        let errors = parse(text).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8, 9, 10], "{errors:?}");
        assert!(
            errors[0].to_string().starts_with("line 2: "),
            "{}",
            errors[0]
        );
        assert!(errors[6].message.contains("twice"), "{}", errors[6]);
        assert!(errors[7].message.contains("SCRAM"), "{}", errors[7]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 0x1234_5678_9abc_def1;
        let alphabet = [
            "\"", "\"\"", " ", "\t", "a", "é", "\n", ";", "#", "\r", "md5",
        ];
        for _ in 0..3000 {
            let mut s = String::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push_str(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = parse(&s);
            seed = seed.wrapping_add(1);
        }
    }
}
