//! Settings for running several instances side by side: the Unix-domain socket's file mode and the `[peers]` table
//! that cancel forwarding reads (see `frontend::peers`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// Highest `peer_id`: the id takes 14 bits of the cancel key's process-id half (PgBouncer's limit too).
pub const MAX_PEER_ID: u16 = 16383;

/// The longest Unix socket path the kernel takes (`sun_path` is 108 bytes with its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Where another instance takes connections: `host:port`, or the path of its Unix socket file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl PeerAddr {
    /// Parses a `[peers]` value: an absolute path is a socket file (`/run/shardpool/.s.PGSQL.6432`), anything else
    /// must be `host:port` (`[::1]:6432` for an IPv6 literal).
    pub fn parse(s: &str) -> Result<PeerAddr, String> {
        if s.starts_with('/') {
            if s.len() > MAX_SOCKET_PATH {
                return Err(format!(
                    "{s:?} is longer than a Unix socket path may be ({MAX_SOCKET_PATH} bytes)"
                ));
            }
            return Ok(PeerAddr::Unix(PathBuf::from(s)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
                Ok(PeerAddr::Tcp(s.to_owned()))
            }
            _ => Err(format!(
                "{s:?} is neither host:port nor the absolute path of a Unix socket"
            )),
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => f.write_str(a),
            PeerAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Parses a `[peers]` key: the peer's id, 1 to [`MAX_PEER_ID`].
pub fn parse_peer_id(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(id) if (1..=MAX_PEER_ID).contains(&id) => Ok(id),
        _ => Err(format!(
            "peer ids are numbers from 1 to {MAX_PEER_ID}, not {s:?}"
        )),
    }
}

/// The socket file `dir/.s.PGSQL.<port>`, named as libpq looks for it.
pub fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// Permission bits for the Unix socket file: a TOML octal integer (`0o770`) or a string as PgBouncer writes it
/// (`"0770"`, `"770"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl Default for FileMode {
    fn default() -> Self {
        FileMode(0o777)
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        let bits = match Raw::deserialize(d)? {
            Raw::Int(n) => u32::try_from(n).ok(),
            Raw::Text(s) => u32::from_str_radix(s.trim(), 8).ok(),
        };
        match bits {
            Some(b) if b <= 0o777 => Ok(FileMode(b)),
            _ => Err(serde::de::Error::custom(
                "unix_socket_mode must be permission bits from 0 to 0777 (\"0770\" or 0o770)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses() {
        assert_eq!(
            PeerAddr::parse("10.0.0.2:6432"),
            Ok(PeerAddr::Tcp("10.0.0.2:6432".into()))
        );
        assert_eq!(
            PeerAddr::parse("[::1]:6432"),
            Ok(PeerAddr::Tcp("[::1]:6432".into()))
        );
        assert_eq!(
            PeerAddr::parse("/run/sp/.s.PGSQL.6432"),
            Ok(PeerAddr::Unix("/run/sp/.s.PGSQL.6432".into()))
        );
        for bad in [
            "",
            "host",
            "host:",
            ":6432",
            "host:0",
            "host:70000",
            "run/x",
        ] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(PeerAddr::parse(&format!("/{}", "x".repeat(200))).is_err());
    }

    #[test]
    fn peer_ids() {
        assert_eq!(parse_peer_id("1"), Ok(1));
        assert_eq!(parse_peer_id("16383"), Ok(16383));
        for bad in ["0", "16384", "-1", "a"] {
            assert!(parse_peer_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn file_modes() {
        #[derive(Deserialize)]
        struct T {
            m: FileMode,
        }
        let m = |s: &str| toml::from_str::<T>(&format!("m = {s}")).map(|t| t.m.0);
        assert_eq!(m("\"0770\"").unwrap(), 0o770);
        assert_eq!(m("\"600\"").unwrap(), 0o600);
        assert_eq!(m("0o777").unwrap(), 0o777);
        assert!(m("\"0999\"").is_err());
        assert!(m("\"01777\"").is_err());
        assert!(m("-1").is_err());
    }
}
