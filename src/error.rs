//! What can go wrong, and what a client may be told about it. Every error the session sees maps to a kind (who
//! caused it) and, when the client is still there, to an `ErrorResponse` with a SQLSTATE. Internal details (addresses,
//! I/O errors) go to the log, never into the client's message.

use crate::protocol::backend::Severity;

/// SQLSTATE codes shardpool emits itself, from Postgres' `src/backend/utils/errcodes.txt`.
pub mod sqlstate {
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const QUERY_CANCELED: &str = "57014";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const STATEMENT_TOO_COMPLEX: &str = "54001";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
}

/// Who is to blame; decides log level and whether the client can still be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client did something wrong (bad password, unknown database, protocol violation).
    User,
    /// The client went away.
    ClientDisconnect,
    /// A server misbehaved or was unreachable.
    Server,
    /// shardpool itself is out of a resource (pool exhausted, shutting down).
    Service,
}

/// An error as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
}

impl ClientError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> ClientError {
        ClientError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
        }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> ClientError {
        ClientError {
            severity: Severity::Error,
            code,
            message: message.into(),
        }
    }

    pub fn write(&self, buf: &mut bytes::BytesMut) {
        crate::protocol::backend::error_response(
            buf,
            self.severity,
            self.code,
            &self.message,
            None,
        );
    }
}

/// Implemented by module errors: the kind, and what (if anything) the client may be told.
pub trait ReportableError: std::error::Error {
    fn kind(&self) -> ErrorKind;
    fn client_error(&self) -> Option<ClientError>;
}
