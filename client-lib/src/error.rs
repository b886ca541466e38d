//! Errors returned by the client.

use fulva_proto::Status;

/// What went wrong with a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No reply within the call's deadline, retransmissions included. A write
    /// that timed out may or may not have been applied (never twice).
    #[error("{op} timed out after {attempts} attempts")]
    Timeout {
        /// Operation name.
        op: &'static str,
        /// Datagrams sent.
        attempts: u32,
    },
    /// The key or value is larger than the node (or the protocol) accepts.
    #[error("key or value too large: {0}")]
    TooLarge(String),
    /// The node rejected the request with this status.
    #[error("node rejected the request: {0:?}")]
    Rejected(Status),
    /// The shard map names no node for the key.
    #[error("no node serves key hash {0:#x}")]
    NoRoute(u64),
    /// The control endpoint could not be reached or answered with an error.
    #[error("control endpoint {endpoint}: {message}")]
    Control {
        /// Endpoint address.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The data-path socket failed.
    #[error("data path: {0}")]
    Io(#[from] std::io::Error),
}
