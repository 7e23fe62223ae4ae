//! The client-side Unix-domain socket, `<unix_socket_dir>/.s.PGSQL.<port>` as libpq names it, so `psql -h DIR -p
//! PORT` (or PGHOST=DIR) reaches shardpool without TCP. A socket file left behind by a process that died is
//! replaced at start, but only once a connection attempt shows nothing listens on it; a live one, or anything that
//! is not a socket, stops the start instead. The file is removed when the listener goes (shutdown), unless another
//! process has put its own socket at that path meanwhile.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use crate::config::{instances::socket_path, FileMode};

#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    #[error("{0} is in use: another process listens on it")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; not touching it")]
    NotASocket(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A bound Unix socket; dropping it removes its file.
pub struct UnixSocket {
    pub listener: UnixListener,
    /// The TCP listen port the socket is named for (SHOW CLIENTS shows it as the port of Unix clients).
    pub port: u16,
    file: SocketFile,
}

impl UnixSocket {
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

/// The socket file as this process created it: removed on drop only if it is still that file.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the Unix socket");
                }
            }
            _ => {}
        }
    }
}

/// Binds `dir/.s.PGSQL.<port>` with permissions `mode`, replacing a stale socket file.
pub async fn bind(dir: &Path, port: u16, mode: FileMode) -> Result<UnixSocket, UnixSocketError> {
    let path = socket_path(dir, port);
    let io = |source| UnixSocketError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
        Ok(m) if !m.file_type().is_socket() => return Err(UnixSocketError::NotASocket(path)),
        Ok(_) => match UnixStream::connect(&path).await {
            Ok(_) => return Err(UnixSocketError::InUse(path)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale Unix socket");
                std::fs::remove_file(&path).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        },
    }
    let listener = UnixListener::bind(&path).map_err(io)?;
    // Taken at once, so that whatever happens next the file is this process' to remove.
    let meta = std::fs::symlink_metadata(&path).map_err(io)?;
    let file = SocketFile {
        path: path.clone(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode.0)).map_err(io)?;
    Ok(UnixSocket {
        listener,
        port,
        file,
    })
}
