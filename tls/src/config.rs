//! rustls configurations built from a role's files, rebuilt when the files
//! change: a renewed certificate (or a new authority) takes effect on the
//! next connection, without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{Role, TlsError};

/// The three files one part of a cluster needs: the authority it trusts,
/// and its own certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `role`'s files in a TLS directory: `ca.crt`, `<role>.crt`, `<role>.key`.
    pub fn in_dir(dir: &Path, role: Role) -> TlsFiles {
        let stem = role.file_stem();
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    fn stamp(&self) -> Stamp {
        [&self.ca, &self.cert, &self.key].map(|path| {
            std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
    }
}

type Stamp = [Option<(SystemTime, u64)>; 3];

/// How often the files are looked at for a change, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A configuration and the files it came from.
pub(crate) struct Reloading<T> {
    files: TlsFiles,
    build: fn(&TlsFiles) -> Result<T, TlsError>,
    state: Mutex<State<T>>,
}

struct State<T> {
    checked: Instant,
    stamp: Stamp,
    current: Arc<T>,
}

impl<T> Reloading<T> {
    pub(crate) fn new(
        files: TlsFiles,
        build: fn(&TlsFiles) -> Result<T, TlsError>,
    ) -> Result<Reloading<T>, TlsError> {
        let stamp = files.stamp();
        let current = Arc::new(build(&files)?);
        Ok(Reloading { files, build, state: Mutex::new(State { checked: Instant::now(), stamp, current }) })
    }

    /// The configuration for a new connection: rebuilt first if a file
    /// changed. Files caught half-renewed keep the last good configuration
    /// (a warning says so) until they make sense again.
    pub(crate) fn current(&self) -> Arc<T> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let stamp = self.files.stamp();
            if stamp != state.stamp {
                match (self.build)(&self.files) {
                    Ok(config) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS files changed: new connections use them");
                        state.current = Arc::new(config);
                        state.stamp = stamp;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "TLS files changed but do not load; keeping the last good ones")
                    }
                }
            }
        }
        state.current.clone()
    }

    pub(crate) fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(files: &TlsFiles) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(&files.ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Parse { what: files.ca.display().to_string(), detail: e.to_string() })?;
    }
    Ok(Arc::new(roots))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let parse = |detail: String| TlsError::Parse { what: path.display().to_string(), detail };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| parse(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse(e.to_string()))?;
    if certs.is_empty() {
        return Err(parse("no certificate in the file".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Parse { what: path.display().to_string(), detail: e.to_string() })
}

fn config_error(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

/// A server that asks every caller for a certificate the authority signed.
pub(crate) fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(files)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client that shows its certificate and trusts only the authority.
pub(crate) fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots(files)?)
        .with_client_auth_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
