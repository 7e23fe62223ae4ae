//! md5 password logins (src/auth/md5.rs) and the stored-secret parser (src/auth/mod.rs).
//! Input: `user \0 password \0 response`, the salt from the response's first bytes.
//! Invariants: no panic; the right response always verifies (with or without its wire NUL); a response with one
//! byte changed never does; a secret parsed from config text verifies the same responses as the password itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardpool::auth::{md5_salted_response, md5_stored_hash, verify_md5_response, StoredSecret};
use shardpool_fuzz::split_nul;

fuzz_target!(|data: &[u8]| {
    let (user, rest) = split_nul(data);
    let (password, response) = split_nul(rest);
    let (Ok(user), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(password))
    else {
        return;
    };
    let mut salt = [0u8; 4];
    salt.iter_mut().zip(response).for_each(|(s, r)| *s = *r);

    let plain = StoredSecret::Plain(password.to_string());
    let _ = verify_md5_response(user, &plain, salt, response);
    let parsed = StoredSecret::parse(password);
    let _ = verify_md5_response(user, &parsed, salt, response);
    let _ = StoredSecret::try_parse(password);

    let stored = md5_stored_hash(user, password);
    let right = md5_salted_response(&stored, salt);
    assert!(verify_md5_response(user, &plain, salt, right.as_bytes()));
    let mut on_wire = right.clone().into_bytes();
    on_wire.push(0);
    assert!(verify_md5_response(user, &plain, salt, &on_wire));
    let md5_secret = StoredSecret::parse(&stored);
    assert!(verify_md5_response(
        user,
        &md5_secret,
        salt,
        right.as_bytes()
    ));
    let mut wrong = right.into_bytes();
    let i = usize::from(salt[0]) % wrong.len();
    wrong[i] ^= 1 + salt[1] % 127;
    assert!(!verify_md5_response(user, &plain, salt, &wrong));
});
