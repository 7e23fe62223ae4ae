//! MD5 password authentication, server side: the legacy login in which the proxy sends
//! AuthenticationMD5Password with a random 4-byte salt ([`super::random_salt4`]) and the client
//! answers with a PasswordMessage holding `"md5" + hex(md5(hex(md5(password ++ user)) ++ salt))`,
//! which [`verify_md5_response`] checks. This is PostgreSQL's scheme from
//! `src/backend/libpq/crypt.c` (`md5_crypt_verify()`) and `src/common/md5_common.c`
//! (`pg_md5_encrypt()`); it exists for old clients and for secrets copied from servers that still
//! store MD5 hashes. Note that the stored hash is password-equivalent for this scheme (knowing it
//! is enough to log in), which is why SCRAM is preferred.

use md5::{Digest, Md5};

use super::{constant_time_eq, StoredSecret};

/// `"md5" + hex(md5(password ++ user))`, the form `pg_authid` stores under
/// `password_encryption = 'md5'`. The user name is the salt, so the same password hashes
/// differently for different roles.
pub fn md5_stored_hash(user: &str, password: &str) -> String {
    md5_hex_prefixed(&[password.as_bytes(), user.as_bytes()])
}

/// The PasswordMessage a client sends for AuthenticationMD5Password. The random salt makes each
/// response single-use, so a sniffed response cannot be replayed on another connection.
///
/// A `stored_hash` without its `"md5"` prefix is accepted as the bare hex digest.
pub fn md5_salted_response(stored_hash: &str, salt: [u8; 4]) -> String {
    let hex_part = stored_hash.strip_prefix("md5").unwrap_or(stored_hash);
    md5_hex_prefixed(&[hex_part.as_bytes(), &salt])
}

/// Whether a client's answer to AuthenticationMD5Password is right. `user` must be the role name
/// from the StartupMessage (Postgres salts with it), `response` the PasswordMessage string; one
/// trailing NUL, as it travels on the wire, is tolerated. A SCRAM verifier cannot check an MD5
/// response at all, so it always fails; Postgres avoids the situation by switching such users to
/// SCRAM, which is the caller's choice to make.
pub fn verify_md5_response(
    user: &str,
    secret: &StoredSecret,
    salt: [u8; 4],
    response: &[u8],
) -> bool {
    let stored = match secret {
        StoredSecret::Plain(password) => md5_stored_hash(user, password),
        StoredSecret::Md5(hash) => hash.clone(),
        StoredSecret::Scram(_) => return false,
    };
    let expected = md5_salted_response(&stored, salt);
    let response = response.strip_suffix(b"\0").unwrap_or(response);
    constant_time_eq(expected.as_bytes(), response)
}

fn md5_hex_prefixed(parts: &[&[u8]]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(3 + 2 * digest.len());
    out.push_str("md5");
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ScramVerifier;
    use postgres_protocol::authentication::md5_hash;

    /// What PostgreSQL 15.18 stored for role `md5user`, password 'secret', under
    /// `password_encryption = 'md5'`.
    const PG15_MD5USER_SECRET: &str = "md52aea419619857e8a27f0f7aa641db0c6";

    #[test]
    fn stored_hash_matches_postgres() {
        assert_eq!(md5_stored_hash("md5user", "secret"), PG15_MD5USER_SECRET);
        // Independently: "md5" + md5("secretmd5user").
        let direct: String = Md5::digest(b"secretmd5user")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(PG15_MD5USER_SECRET, format!("md5{direct}"));
        assert_eq!(
            postgres_protocol::password::md5(b"secret", "md5user"),
            PG15_MD5USER_SECRET
        );
        // Empty password and user are hashed, not special-cased.
        assert_eq!(
            md5_stored_hash("", ""),
            "md5d41d8cd98f00b204e9800998ecf8427e"
        );
    }

    #[test]
    fn salted_response_matches_rust_postgres_client() {
        for salt in [[0, 0, 0, 0], [1, 2, 3, 4], [0xff, 0x00, 0x7f, 0x80]] {
            let client = md5_hash(b"md5user", b"secret", salt);
            assert_eq!(md5_salted_response(PG15_MD5USER_SECRET, salt), client);
            // The bare hex digest works too.
            assert_eq!(md5_salted_response(&PG15_MD5USER_SECRET[3..], salt), client);
        }
    }

    #[test]
    fn verify_accepts_the_right_response() {
        let salt = [0x12, 0x34, 0x56, 0x78];
        let response = md5_hash(b"md5user", b"secret", salt);
        let plain = StoredSecret::Plain("secret".into());
        let hashed = StoredSecret::parse(PG15_MD5USER_SECRET);
        assert!(matches!(hashed, StoredSecret::Md5(_)));
        for secret in [&plain, &hashed] {
            assert!(verify_md5_response(
                "md5user",
                secret,
                salt,
                response.as_bytes()
            ));
            let mut with_nul = response.clone().into_bytes();
            with_nul.push(0);
            assert!(verify_md5_response("md5user", secret, salt, &with_nul));
        }
    }

    #[test]
    fn verify_rejects_wrong_responses() {
        let salt = [0x12, 0x34, 0x56, 0x78];
        let plain = StoredSecret::Plain("secret".into());
        let hashed = StoredSecret::parse(PG15_MD5USER_SECRET);
        let right = md5_hash(b"md5user", b"secret", salt);
        let wrong_password = md5_hash(b"md5user", b"Secret", salt);
        let wrong_user = md5_hash(b"other", b"secret", salt);
        let wrong_salt = md5_hash(b"md5user", b"secret", [0x12, 0x34, 0x56, 0x79]);
        let mut upper = right.to_uppercase().into_bytes();
        upper[..3].copy_from_slice(b"md5");
        for secret in [&plain, &hashed] {
            for bad in [
                wrong_password.as_bytes(),
                wrong_user.as_bytes(),
                wrong_salt.as_bytes(),
                &upper,
                &right.as_bytes()[3..],
                &right.as_bytes()[..34],
                format!("{right}\0\0").as_bytes(),
                format!("{right} ").as_bytes(),
                b"",
                b"\0",
                b"md5",
                b"\xff\xfe",
            ] {
                assert!(
                    !verify_md5_response("md5user", secret, salt, bad),
                    "accepted {:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        // Right response, but the login names another role: with a clear-text secret the role
        // name salts the hash. (A stored MD5 hash already has its role name baked in.)
        assert!(!verify_md5_response(
            "md5User",
            &plain,
            salt,
            right.as_bytes()
        ));
        // The clear-text password itself is not an acceptable md5 response.
        assert!(!verify_md5_response("md5user", &plain, salt, b"secret"));
        // Nor the stored hash (that would make the salt pointless).
        assert!(!verify_md5_response(
            "md5user",
            &hashed,
            salt,
            PG15_MD5USER_SECRET.as_bytes()
        ));
    }

    #[test]
    fn scram_secret_never_verifies_md5() {
        let salt = [9, 9, 9, 9];
        let secret = StoredSecret::Scram(ScramVerifier::from_password("secret", b"salt", 16));
        let response = md5_hash(b"md5user", b"secret", salt);
        assert!(!verify_md5_response(
            "md5user",
            &secret,
            salt,
            response.as_bytes()
        ));
    }
}
