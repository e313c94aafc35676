//! Control: the Unix socket that steers a running daemon ([`server`]), its wire types ([`proto`]), and the
//! client the CLI uses ([`client`]).
//!
//! The server never touches the daemon's state: every request goes to the daemon as a [`server::Call`] with a
//! oneshot for the reply, and events come from the daemon's broadcast channel.

pub mod client;
pub mod proto;
pub mod server;
