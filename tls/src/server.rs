//! The server side: a listener whose connections have passed the handshake,
//! and the check of who a caller is.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use rustls::pki_types::CertificateDer;

use crate::config::{server_config, Material, Reloading, TlsFiles};
use crate::stream::MaybeTls;
use crate::trust::Authorities;
use crate::{Issued, Role, TlsError};

/// How long a caller may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections not yet taken by the server.
const BACKLOG: usize = 64;

/// A server's TLS: its identity, the authority its callers must come from,
/// and a count of the callers refused.
pub struct ServerTls {
    config: Reloading<rustls::ServerConfig>,
    /// Who may call, when not those the identity's own authority signed.
    callers: Option<Arc<Authorities>>,
    refused: AtomicU64,
    on_refused: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.config.files()).finish()
    }
}

impl ServerTls {
    /// Loads `files`; they are read again when they change.
    pub fn new(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        Ok(ServerTls::with(Reloading::new(files, server_config)?, None))
    }

    /// A server showing `identity`, accepting callers `ca_pem` signed;
    /// [`ServerTls::renew`] replaces them.
    pub fn from_pem(ca_pem: &str, identity: &Issued) -> Result<Arc<ServerTls>, TlsError> {
        Ok(ServerTls::with(
            Reloading::in_memory(&Material::from_pem(ca_pem, identity)?, server_config)?,
            None,
        ))
    }

    /// A server showing `identity` (which `ca_pem` signed) to callers any
    /// of `callers`' authorities signed: one endpoint serving many clusters.
    pub fn for_authorities(
        ca_pem: &str,
        identity: &Issued,
        callers: Arc<Authorities>,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let mut material = Material::from_pem(ca_pem, identity)?;
        material.callers = Some(callers.clone() as Arc<dyn rustls::server::danger::ClientCertVerifier>);
        Ok(ServerTls::with(Reloading::in_memory(&material, server_config)?, Some(callers)))
    }

    fn with(config: Reloading<rustls::ServerConfig>, callers: Option<Arc<Authorities>>) -> Arc<ServerTls> {
        Arc::new(ServerTls {
            config,
            callers,
            refused: AtomicU64::new(0),
            on_refused: std::sync::OnceLock::new(),
        })
    }

    /// New connections show `identity` and trust `ca_pem` (a server made
    /// with [`ServerTls::from_pem`]; one made from files follows its files).
    pub fn renew(&self, ca_pem: &str, identity: &Issued) -> Result<(), TlsError> {
        let mut material = Material::from_pem(ca_pem, identity)?;
        material.callers =
            self.callers.clone().map(|c| c as Arc<dyn rustls::server::danger::ClientCertVerifier>);
        self.config.replace(&material)
    }

    /// Calls `count` on every refused handshake (a metric); set once.
    pub fn count_refusals_with(&self, count: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_refused.set(Box::new(count));
    }

    fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.on_refused.get() {
            count();
        }
    }

    /// How many connections failed their handshake (no certificate, one the
    /// authority did not sign, an expired one, not TLS at all).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The files this server's identity comes from (none: from memory).
    pub fn files(&self) -> Option<&TlsFiles> {
        self.config.files()
    }
}

/// Who is on the other end of an accepted connection. tonic hands it to
/// every request of the connection (see [`authorize`]).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// The DNS names of the caller's certificate (empty without TLS).
    names: Arc<[String]>,
    /// The caller's verified certificate chain, its own first (empty
    /// without TLS).
    chain: Arc<[CertificateDer<'static>]>,
    /// Whether the connection runs under TLS. Without it, nobody is checked.
    secured: bool,
}

impl PeerInfo {
    /// Whether the caller is `role`: its verified certificate names it.
    /// Always true on a server that runs without TLS (`--insecure`).
    pub fn is(&self, role: Role) -> bool {
        if !self.secured {
            return true;
        }
        let name = role.dns_name();
        self.names.contains(&name)
    }

    /// Whether the caller's certificate comes from the authority `authorities`
    /// knows as `name`. Always true without TLS.
    pub fn signed_by(&self, authorities: &Authorities, name: &str) -> bool {
        !self.secured || authorities.signed(name, &self.chain)
    }

    /// The first name of the caller's certificate, if any.
    pub fn name(&self) -> Option<&str> {
        self.names.first().map(String::as_str)
    }
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.remote.map_or_else(|| "?".to_string(), |a| a.to_string());
        match self.name() {
            Some(name) => write!(f, "{name} at {addr}"),
            None if self.secured => write!(f, "a caller with no name at {addr}"),
            None => write!(f, "{addr}"),
        }
    }
}

/// Refuses a call unless its caller is one of `allowed`. A server built
/// without TLS (or not on [`incoming`]) lets every call through.
#[allow(clippy::result_large_err)]
pub fn authorize<T>(request: &tonic::Request<T>, allowed: &[Role]) -> Result<(), tonic::Status> {
    match request.extensions().get::<PeerInfo>() {
        Some(peer) if !allowed.iter().any(|role| peer.is(*role)) => {
            let wanted: Vec<String> = allowed.iter().map(Role::dns_name).collect();
            tracing::warn!(%peer, "call refused: the caller is not {}", wanted.join(" or "));
            Err(tonic::Status::permission_denied(format!(
                "{peer} may not make this call: it is for {}",
                wanted.join(" or ")
            )))
        }
        _ => Ok(()),
    }
}

/// An accepted connection whose handshake (if any) is done.
pub struct Conn {
    io: MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>,
    info: PeerInfo,
}

impl Conn {
    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The connections of `listener`, each past its handshake when `tls` is
/// set (handshakes run side by side, so a slow caller holds up no other).
/// A failed handshake is logged and counted, and never reaches the server.
/// The stream owns the listener: dropping it closes the port at once. Feed
/// it to tonic's `serve_with_incoming`, or read it for a raw protocol.
pub fn incoming(listener: TcpListener, tls: Option<Arc<ServerTls>>) -> Incoming {
    let (done_tx, done_rx) = mpsc::channel(BACKLOG);
    Incoming { listener, tls, done_tx, done_rx }
}

/// The stream [`incoming`] returns.
pub struct Incoming {
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    done_tx: mpsc::Sender<Conn>,
    done_rx: mpsc::Receiver<Conn>,
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Conn>>> {
        let this = self.get_mut();
        loop {
            if let Poll::Ready(Some(conn)) = this.done_rx.poll_recv(cx) {
                return Poll::Ready(Some(Ok(conn)));
            }
            let (tcp, remote) = match this.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
                Poll::Pending => return Poll::Pending,
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = this.tls.clone() else {
                let info = PeerInfo {
                    remote: Some(remote),
                    names: Arc::from([]),
                    chain: Arc::from([]),
                    secured: false,
                };
                return Poll::Ready(Some(Ok(Conn { io: MaybeTls::Plain(tcp), info })));
            };
            tokio::spawn(handshake(tcp, remote, tls, this.done_tx.clone()));
        }
    }
}

/// One caller's handshake; the connection goes to `done` if it passes.
async fn handshake(tcp: TcpStream, remote: SocketAddr, tls: Arc<ServerTls>, done: mpsc::Sender<Conn>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.current());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let chain: Vec<CertificateDer<'static>> =
                stream.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
            let names = chain.first().map(dns_names).unwrap_or_default();
            let info =
                PeerInfo { remote: Some(remote), names: names.into(), chain: chain.into(), secured: true };
            let _ = done.send(Conn { io: MaybeTls::Tls(Box::new(stream)), info }).await;
        }
        Ok(Err(err)) => {
            tls.refuse();
            tracing::info!(%remote, error = %err, "TLS handshake refused");
        }
        Err(_) => {
            tls.refuse();
            tracing::info!(%remote, "TLS handshake not finished within 10 s");
        }
    }
}

/// The DNS names a (verified) certificate carries.
fn dns_names(cert: &rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert.as_ref()) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}
