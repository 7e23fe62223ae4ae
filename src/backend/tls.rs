//! TLS from the proxy to its servers (rustls), with libpq's `sslmode` meanings so an operator's expectations carry
//! over: `disable` never asks; `prefer` asks and carries on in plain text when the server says no; `require` insists
//! on encryption; `verify-ca` also checks that the certificate chains to `server_tls_ca_file`; `verify-full` also
//! checks that it names the host the proxy dialled.
//!
//! `prefer` and `require` without a CA file do not verify the certificate at all, as libpq does not: they stop a
//! passive listener, not an active man in the middle, who can present any certificate. As in libpq, giving a CA file
//! makes them verify the chain too (an operator who supplies a CA means it to be used).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;

/// `server_tls_mode`: how hard the proxy insists on TLS to its servers (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain connections only; no SSLRequest is sent.
    Disable,
    /// TLS when the server offers it, plain otherwise. The default, as in libpq and PgBouncer (since 1.21).
    #[default]
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS with a certificate that chains to `server_tls_ca_file`.
    VerifyCa,
    /// TLS with a certificate that chains to `server_tls_ca_file` and names the configured host.
    VerifyFull,
}

impl ServerTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a server that answers the SSLRequest with 'N' must be refused.
    pub fn requires_tls(self) -> bool {
        !matches!(self, ServerTlsMode::Disable | ServerTlsMode::Prefer)
    }

    /// Whether the mode cannot work without a CA file.
    pub fn needs_ca(self) -> bool {
        matches!(self, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull)
    }
}

impl std::fmt::Display for ServerTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("server_tls_mode = \"{0}\" needs server_tls_ca_file")]
    NoCa(ServerTlsMode),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} contains no certificate")]
    NoCertificate(String),
    #[error("{path}: {source}")]
    BadCertificate { path: String, source: rustls::Error },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS side of one server target: the mode and, unless disabled, the rustls configuration it implies (built once
/// per configuration load, shared by every connection of the pools that use it).
#[derive(Clone)]
pub struct ServerTls {
    mode: ServerTlsMode,
    ca_file: Option<PathBuf>,
    /// xxh3 of the CA file as read, so a reload that changes the file's contents (not only its name) rebuilds pools.
    ca_digest: u64,
    config: Option<Arc<ClientConfig>>,
    /// Set when the configuration could not be built (the CA file went away after validation): every connection
    /// then fails with this reason instead of falling back to something weaker.
    unusable: Option<Arc<str>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        (self.mode, &self.ca_file, self.ca_digest, &self.unusable)
            == (other.mode, &other.ca_file, other.ca_digest, &other.unusable)
    }
}

impl Eq for ServerTls {}

impl Default for ServerTls {
    /// `prefer` without a CA file, libpq's default.
    fn default() -> Self {
        ServerTls {
            mode: ServerTlsMode::Prefer,
            ca_file: None,
            ca_digest: 0,
            config: Some(Arc::clone(unverified_config())),
            unusable: None,
        }
    }
}

impl ServerTls {
    /// Reads the CA file (if any) and builds the rustls configuration for `mode`.
    pub fn new(mode: ServerTlsMode, ca_file: Option<&Path>) -> Result<ServerTls, ServerTlsError> {
        if mode == ServerTlsMode::Disable {
            return Ok(ServerTls {
                mode,
                ca_file: None,
                ca_digest: 0,
                config: None,
                unusable: None,
            });
        }
        let Some(path) = ca_file else {
            if mode.needs_ca() {
                return Err(ServerTlsError::NoCa(mode));
            }
            return Ok(ServerTls {
                mode,
                ..ServerTls::default()
            });
        };
        let (roots, digest) = read_roots(path)?;
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let mut config = if mode == ServerTlsMode::VerifyFull {
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| ServerTlsError::Rustls(rustls::Error::General(e.to_string())))?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NameBlind {
                    roots: Some(roots),
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth()
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(ServerTls {
            mode,
            ca_file: Some(path.to_owned()),
            ca_digest: digest,
            config: Some(Arc::new(config)),
            unusable: None,
        })
    }

    /// [`ServerTls::new`], or on error a target that refuses to connect (fail closed) and says why.
    pub fn new_or_unusable(mode: ServerTlsMode, ca_file: Option<&Path>) -> ServerTls {
        ServerTls::new(mode, ca_file).unwrap_or_else(|e| {
            tracing::error!(mode = %mode, error = %e, "server TLS configuration unusable; connections will fail");
            ServerTls {
                mode,
                ca_file: ca_file.map(Path::to_owned),
                ca_digest: 0,
                config: None,
                unusable: Some(Arc::from(e.to_string())),
            }
        })
    }

    /// Why this target cannot connect at all, if it cannot.
    pub fn unusable(&self) -> Option<&str> {
        self.unusable.as_deref()
    }

    pub fn mode(&self) -> ServerTlsMode {
        self.mode
    }

    /// The configuration to handshake with; `None` when TLS is disabled.
    pub fn client_config(&self) -> Option<&Arc<ClientConfig>> {
        self.config.as_ref()
    }

    /// Whether a completed handshake proved the server's identity (a chain to the CA at least), which is what makes
    /// sending it a cleartext password safe.
    pub fn verifies(&self) -> bool {
        self.config.is_some() && self.ca_file.is_some()
    }
}

/// ALPN name Postgres 17 registered; older servers ignore it, newer ones accept it on the SSLRequest path too.
const ALPN: &[u8] = b"postgresql";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_roots(path: &Path) -> Result<(RootCertStore, u64), ServerTlsError> {
    let text = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| ServerTlsError::Read {
        path: text.clone(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| ServerTlsError::Read {
            path: text.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ServerTlsError::NoCertificate(text));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|source| ServerTlsError::BadCertificate {
                path: text.clone(),
                source,
            })?;
    }
    Ok((roots, xxhash_rust::xxh3::xxh3_64(&pem)))
}

/// One configuration for every unverified target: it holds nothing target-specific.
fn unverified_config() -> &'static Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let provider = provider();
        let algorithms = provider.signature_verification_algorithms;
        // Only fails for a provider without safe protocol versions; ring has both TLS 1.2 and 1.3.
        let builder = match ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b,
            Err(_) => ClientConfig::builder(),
        };
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NameBlind {
                roots: None,
                algorithms,
            }))
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        Arc::new(config)
    })
}

/// The verifier for the modes webpki's own does not cover, both of which ignore the name the certificate carries:
/// - with `roots` (`verify-ca`, and `prefer`/`require` with a CA): the chain must lead to the CA file, for servers
///   reached by addresses their certificates do not list;
/// - without (`prefer`/`require` without a CA): any certificate is accepted, as libpq does. The handshake signature
///   is still checked against the presented certificate, so the session keys belong to whoever holds its private
///   key, but nothing says who that is: a man in the middle can present his own certificate.
#[derive(Debug)]
struct NameBlind {
    roots: Option<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NameBlind {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_need_a_ca_file() {
        for mode in [ServerTlsMode::VerifyCa, ServerTlsMode::VerifyFull] {
            assert!(matches!(
                ServerTls::new(mode, None),
                Err(ServerTlsError::NoCa(m)) if m == mode
            ));
        }
        let require = ServerTls::new(ServerTlsMode::Require, None).expect("require without CA");
        assert!(require.client_config().is_some() && !require.verifies());
        let disable = ServerTls::new(ServerTlsMode::Disable, None).expect("disable");
        assert!(disable.client_config().is_none());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        assert!(matches!(
            ServerTls::new(ServerTlsMode::VerifyCa, Some(&missing)),
            Err(ServerTlsError::Read { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        assert!(matches!(
            ServerTls::new(ServerTlsMode::VerifyFull, Some(&empty)),
            Err(ServerTlsError::NoCertificate(_))
        ));
    }
}
