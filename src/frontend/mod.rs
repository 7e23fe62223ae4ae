//! The client side of the proxy: accepting connections, the startup handshake and login, and the session that
//! multiplexes a client's transactions onto pooled server connections.

pub mod buffers;
pub mod handshake;
pub mod listener;
pub mod login;
pub mod peers;
pub mod prepared;
pub mod relay;
pub mod session;
pub mod spin;
pub mod startup_params;
pub mod stream;
pub mod tls;
pub mod unix;
