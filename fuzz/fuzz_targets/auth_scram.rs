//! SCRAM-SHA-256 logins, server side (src/auth/scram.rs), and the verifier text parser.
//! Input: `verifier-or-password \0 client-first \0 client-final`; the first byte of the client-final part also
//! picks which byte of a real exchange to tamper with.
//! Invariants: no panic on any message in any order; a parsed verifier prints as text that parses back to the
//! same verifier (and to the same text when the input was already canonical, as pg_authid's is); a real
//! client (rust-postgres' SCRAM, as libpq and pgjdbc do it) with the right password always logs in and accepts
//! the server's signature; any changed byte in its final message, or a wrong password, never logs in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use shardpool::auth::{AuthError, ScramServer, ScramVerifier, StoredSecret};
use shardpool_fuzz::split_nul;

fn real_exchange(verifier: &ScramVerifier, password: &[u8], tamper: Option<(usize, u8)>) -> bool {
    let mut client = ScramSha256::new(password, ChannelBinding::unsupported());
    let mut server = ScramServer::new(verifier.clone());
    let server_first = server
        .client_first(client.message())
        .expect("a real client-first message");
    client
        .update(&server_first)
        .expect("our server-first message");
    let mut last = client.message().to_vec();
    if let Some((at, flip)) = tamper {
        let i = at % last.len();
        last[i] ^= flip.max(1);
    }
    match server.client_final(&last) {
        Ok(server_final) => {
            client
                .finish(&server_final)
                .expect("the client accepts our signature");
            assert!(
                server.client_final(&last).is_err(),
                "a finished exchange ended"
            );
            true
        }
        Err(_) => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let (secret, rest) = split_nul(data);
    let (first, last) = split_nul(rest);
    let Ok(secret) = std::str::from_utf8(secret) else {
        return;
    };
    if let Ok(v) = ScramVerifier::parse(secret) {
        // Postgres reads the count with strtol, so "0096" is a valid count of 96: the text is not unique, the
        // verifier is.
        let canonical = v.to_string();
        let again = ScramVerifier::parse(&canonical).expect("a printed verifier parses");
        assert!(again == v, "{secret:?} printed as {canonical:?}");
        assert_eq!(again.to_string(), canonical);
        assert!(matches!(
            StoredSecret::parse(secret),
            StoredSecret::Scram(_)
        ));
    }

    // Arbitrary messages, in order and out of order.
    let verifier = ScramVerifier::from_password("pencil", b"saltsalt", 1);
    let mut server = ScramServer::new(verifier.clone());
    let first_ok = server.client_first(first).is_ok();
    let outcome = server.client_final(last);
    // Without the server's fresh nonce no client-final message can be right.
    assert!(outcome.is_err());
    if !first_ok {
        assert!(matches!(outcome, Err(AuthError::InvalidState(_))));
    }
    assert!(server.client_first(first).is_err());
    let mut backwards = ScramServer::new(verifier);
    assert!(backwards.client_final(last).is_err());

    // A real exchange. from_password hashes ASCII passwords exactly as Postgres and its clients do (see its doc).
    if secret.is_ascii() {
        let salt = if first.is_empty() { &b"s"[..] } else { first };
        let iterations = u32::from(last.first().copied().unwrap_or(0) % 4) + 1;
        let verifier = ScramVerifier::from_password(secret, salt, iterations);
        assert!(real_exchange(&verifier, secret.as_bytes(), None));
        let mut wrong = secret.as_bytes().to_vec();
        wrong.push(b'x');
        assert!(!real_exchange(&verifier, &wrong, None));
        let at = last.get(1).map_or(0, |&b| usize::from(b));
        let flip = last.get(2).copied().unwrap_or(1);
        assert!(!real_exchange(
            &verifier,
            secret.as_bytes(),
            Some((at, flip))
        ));
    }
});
