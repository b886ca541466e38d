//! The client side: gRPC channels and raw streams that show the caller's
//! certificate and check that the server is the part they meant to reach.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::{client_config, Material, Reloading, TlsFiles};
use crate::stream::{ClientStream, MaybeTls};
use crate::{Issued, Role, TlsError};

/// A client's TLS: its identity and the authority it trusts.
pub struct ClientTls {
    config: Reloading<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("files", &self.config.files()).finish()
    }
}

impl ClientTls {
    /// Loads `files`; they are read again when they change.
    pub fn new(files: TlsFiles) -> Result<Arc<ClientTls>, TlsError> {
        Ok(Arc::new(ClientTls { config: Reloading::new(files, client_config)? }))
    }

    /// A client showing `identity` and trusting the authorities in `ca_pem`
    /// (one or more certificates); [`ClientTls::renew`] replaces them.
    pub fn from_pem(ca_pem: &str, identity: &Issued) -> Result<Arc<ClientTls>, TlsError> {
        let material = Material::from_pem(ca_pem, identity)?;
        Ok(Arc::new(ClientTls { config: Reloading::in_memory(&material, client_config)? }))
    }

    /// New connections show `identity` and trust `ca_pem` (a client made
    /// with [`ClientTls::from_pem`]; one made from files follows its files).
    pub fn renew(&self, ca_pem: &str, identity: &Issued) -> Result<(), TlsError> {
        self.config.replace(&Material::from_pem(ca_pem, identity)?)
    }
}

/// Opens a TCP connection to `addr` and, with `tls`, a handshake that shows
/// this side's certificate and accepts only a server certified as `server`.
pub async fn connect_stream(
    addr: &str,
    tls: Option<&Arc<ClientTls>>,
    server: Role,
) -> io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else { return Ok(MaybeTls::Plain(tcp)) };
    let name = ServerName::try_from(server.dns_name())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = tokio_rustls::TlsConnector::from(tls.config.current()).connect(name, tcp).await?;
    Ok(MaybeTls::Tls(Box::new(stream)))
}

/// A connector for tonic's `Endpoint::connect_with_connector`.
#[derive(Clone)]
pub struct Connector {
    tls: Option<Arc<ClientTls>>,
    server: Role,
}

impl Connector {
    /// Connects to a server certified as `server` (plainly without `tls`).
    pub fn new(tls: Option<Arc<ClientTls>>, server: Role) -> Connector {
        Connector { tls, server }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<ClientStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (tls, server) = (self.tls.clone(), self.server);
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in the address"))?;
            let port = uri.port_u16().unwrap_or(80);
            let stream = connect_stream(&format!("{host}:{port}"), tls.as_ref(), server).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Connects `endpoint` (an `http://` address) to a server certified as
/// `server`, under TLS when `tls` is set.
pub async fn connect_channel(
    endpoint: Endpoint,
    tls: Option<&Arc<ClientTls>>,
    server: Role,
) -> Result<Channel, tonic::transport::Error> {
    endpoint.connect_with_connector(Connector::new(tls.cloned(), server)).await
}
