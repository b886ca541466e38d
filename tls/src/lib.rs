//! Mutual TLS for Fulva's gRPC hops and transfer streams.
//!
//! Each cluster has its own certificate authority ([`Authority`]), and each
//! part its own certificate naming its [`Role`]: the coordinator, a node by
//! id, an admin tool, a client. Servers accept only callers the authority
//! signed ([`incoming`]) and check per call who may make it
//! ([`authorize`]); clients check that the server is the part they meant
//! ([`connect_channel`], [`connect_stream`]). Both ends read their files
//! again when they change, so renewed certificates need no restart.
//!
//! Running without TLS is a choice made explicitly (`--insecure`): then
//! every `Option<Arc<...Tls>>` here is `None`, connections are plain TCP,
//! and [`authorize`] lets every call through.

mod ca;
mod client;
mod config;
mod identity;
mod server;
mod stream;
mod trust;

use std::path::{Path, PathBuf};

pub use ca::{generate_dir, write_identity, Authority, Issued, AUTHORITY_VALIDITY, DEFAULT_VALIDITY};
pub use client::{connect_channel, connect_stream, ClientTls, Connector};
pub use config::TlsFiles;
pub use identity::Role;
pub use server::{authorize, incoming, Conn, Incoming, PeerInfo, ServerTls};
pub use stream::{ClientStream, MaybeTls};
pub use trust::{check_issued, Authorities};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot read {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TlsError {
    fn io(path: &Path, source: std::io::Error) -> TlsError {
        TlsError::Io { path: path.to_path_buf(), source }
    }

    fn generate(e: impl std::fmt::Display) -> TlsError {
        TlsError::Generate(e.to_string())
    }
}

/// The TLS of one part of a cluster: the files of its role, as server and
/// as client. `None` where the part runs without TLS.
#[derive(Clone)]
pub struct Tls {
    pub role: Role,
    pub server: std::sync::Arc<ServerTls>,
    pub client: std::sync::Arc<ClientTls>,
}

impl Tls {
    /// Loads `role`'s files from a TLS directory.
    pub fn from_dir(dir: &Path, role: Role) -> Result<Tls, TlsError> {
        let files = TlsFiles::in_dir(dir, role);
        Ok(Tls { role, server: ServerTls::new(files.clone())?, client: ClientTls::new(files)? })
    }

    /// `role`'s TLS from PEM in memory: the authority `ca_pem` and an
    /// identity it signed. [`Tls::renew`] replaces them.
    pub fn from_pem(role: Role, ca_pem: &str, identity: &Issued) -> Result<Tls, TlsError> {
        Ok(Tls {
            role,
            server: ServerTls::from_pem(ca_pem, identity)?,
            client: ClientTls::from_pem(ca_pem, identity)?,
        })
    }

    /// Renews an identity made with [`Tls::from_pem`]: new connections, as
    /// server and as client, use `identity` and trust `ca_pem`.
    pub fn renew(&self, ca_pem: &str, identity: &Issued) -> Result<(), TlsError> {
        self.server.renew(ca_pem, identity)?;
        self.client.renew(ca_pem, identity)
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("role", &self.role).field("files", &self.server.files()).finish()
    }
}

/// An error with its causes, `outer: inner: ...` (a failed handshake shows
/// as "transport error" alone otherwise).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
