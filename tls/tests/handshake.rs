//! Real TLS handshakes between the listener and the connector: who gets in,
//! who is refused, and renewed files taking effect without a restart.

use std::sync::Arc;
use std::time::Duration;

use fulva_tls::{connect_stream, generate_dir, incoming, Authority, ClientTls, Role, ServerTls, TlsFiles};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A server for `role` from `dir` that echoes one line per connection and
/// reports the name each caller's certificate carries.
async fn echo_server(
    dir: &std::path::Path,
    role: Role,
) -> (String, Arc<ServerTls>, tokio::sync::mpsc::Receiver<String>) {
    let tls = ServerTls::new(TlsFiles::in_dir(dir, role)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut conns = incoming(listener, Some(tls.clone()));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(Ok(mut conn)) = conns.next().await {
            let _ = tx.send(conn.peer().name().unwrap_or("").to_string()).await;
            tokio::spawn(async move {
                let mut buf = [0u8; 5];
                if conn.read_exact(&mut buf).await.is_ok() {
                    let _ = conn.write_all(&buf).await;
                }
            });
        }
    });
    (addr, tls, rx)
}

async fn echo(addr: &str, tls: &Arc<ClientTls>, server: Role) -> std::io::Result<[u8; 5]> {
    let mut stream = connect_stream(addr, Some(tls), server).await?;
    stream.write_all(b"hello").await?;
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[tokio::test]
async fn a_signed_caller_gets_in_and_is_known_by_name() {
    let dir = tempfile::tempdir().unwrap();
    generate_dir(dir.path(), "t", &[Role::Node(1), Role::Node(2)], DAY).unwrap();
    let (addr, tls, mut callers) = echo_server(dir.path(), Role::Node(1)).await;
    let client = ClientTls::new(TlsFiles::in_dir(dir.path(), Role::Node(2))).unwrap();
    assert_eq!(&echo(&addr, &client, Role::Node(1)).await.unwrap(), b"hello");
    assert_eq!(callers.recv().await.unwrap(), "node-2.fulva");
    assert_eq!(tls.refused(), 0);
}

#[tokio::test]
async fn a_server_that_is_not_the_one_asked_for_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    generate_dir(dir.path(), "t", &[Role::Node(1), Role::Coordinator], DAY).unwrap();
    let (addr, _tls, _callers) = echo_server(dir.path(), Role::Node(1)).await;
    let client = ClientTls::new(TlsFiles::in_dir(dir.path(), Role::Coordinator)).unwrap();
    let err = echo(&addr, &client, Role::Node(2)).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn callers_without_a_certificate_of_the_authority_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    generate_dir(dir.path(), "t", &[Role::Node(1)], DAY).unwrap();
    let (addr, tls, mut callers) = echo_server(dir.path(), Role::Node(1)).await;

    // 1. TLS that trusts the server but shows no certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(dir.path().join("ca.crt")).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("node-1.fulva").unwrap();
    // TLS 1.3 sends the client's (missing) certificate after the client
    // thinks it is done: the refusal shows on first use.
    let refused = match connector.connect(name, tcp).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"hello").await;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.is_err()
        }
    };
    assert!(refused, "a caller without a certificate was served");

    // 2. A certificate from another authority.
    let other = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("ca.crt"), other.path().join("ca.crt")).unwrap();
    let stranger = Authority::generate("other", DAY).unwrap().issue(Role::Coordinator, DAY).unwrap();
    fulva_tls::write_identity(other.path(), Role::Coordinator, &stranger).unwrap();
    let client = ClientTls::new(TlsFiles::in_dir(other.path(), Role::Coordinator)).unwrap();
    assert!(echo(&addr, &client, Role::Node(1)).await.is_err());

    // 3. Not TLS at all.
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tls.refused() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tls.refused(), 3);
    assert!(callers.try_recv().is_err(), "no refused caller reached the server");
}

#[tokio::test]
async fn renewed_files_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    generate_dir(dir.path(), "t", &[Role::Node(1)], DAY).unwrap();
    let (addr, _tls, _callers) = echo_server(dir.path(), Role::Node(1)).await;

    // A caller from a new authority is refused until the server's files
    // are replaced by ones from that authority.
    let renewed = tempfile::tempdir().unwrap();
    generate_dir(renewed.path(), "t2", &[Role::Node(1), Role::Admin], DAY).unwrap();
    let client = ClientTls::new(TlsFiles::in_dir(renewed.path(), Role::Admin)).unwrap();
    assert!(echo(&addr, &client, Role::Node(1)).await.is_err());

    for file in ["ca.crt", "node-1.crt", "node-1.key"] {
        std::fs::copy(renewed.path().join(file), dir.path().join(file)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(&echo(&addr, &client, Role::Node(1)).await.unwrap(), b"hello");
}
