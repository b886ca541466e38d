//! rustls configurations built from a role's files, rebuilt when the files
//! change: a renewed certificate (or a new authority) takes effect on the
//! next connection, without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
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

/// Where a configuration's certificates come from: files, read again when
/// they change, or PEM held in memory, replaced by whoever holds it.
pub(crate) enum Source {
    Files(TlsFiles),
    Memory,
}

/// A configuration and where it came from.
pub(crate) struct Reloading<T> {
    source: Source,
    build: fn(&Material) -> Result<T, TlsError>,
    state: Mutex<State<T>>,
}

struct State<T> {
    checked: Instant,
    stamp: Stamp,
    current: Arc<T>,
}

impl<T> Reloading<T> {
    /// A configuration from `files`, read again when they change.
    pub(crate) fn new(
        files: TlsFiles,
        build: fn(&Material) -> Result<T, TlsError>,
    ) -> Result<Reloading<T>, TlsError> {
        let stamp = files.stamp();
        let current = Arc::new(build(&Material::from_files(&files)?)?);
        let state = Mutex::new(State { checked: Instant::now(), stamp, current });
        Ok(Reloading { source: Source::Files(files), build, state })
    }

    /// A configuration from PEM in memory; [`Reloading::replace`] renews it.
    pub(crate) fn in_memory(
        material: &Material,
        build: fn(&Material) -> Result<T, TlsError>,
    ) -> Result<Reloading<T>, TlsError> {
        let current = Arc::new(build(material)?);
        let state = Mutex::new(State { checked: Instant::now(), stamp: [None; 3], current });
        Ok(Reloading { source: Source::Memory, build, state })
    }

    /// Builds from `material` and uses it for every new connection.
    pub(crate) fn replace(&self, material: &Material) -> Result<(), TlsError> {
        let config = Arc::new((self.build)(material)?);
        self.state.lock().current = config;
        Ok(())
    }

    /// The configuration for a new connection: rebuilt first if a file
    /// changed. Files caught half-renewed keep the last good configuration
    /// (a warning says so) until they make sense again.
    pub(crate) fn current(&self) -> Arc<T> {
        let mut state = self.state.lock();
        let Source::Files(files) = &self.source else { return state.current.clone() };
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let stamp = files.stamp();
            if stamp != state.stamp {
                match Material::from_files(files).and_then(|m| (self.build)(&m)) {
                    Ok(config) => {
                        tracing::info!(cert = %files.cert.display(), "TLS files changed: new connections use them");
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

    /// The files this configuration comes from (none: from memory).
    pub(crate) fn files(&self) -> Option<&TlsFiles> {
        match &self.source {
            Source::Files(files) => Some(files),
            Source::Memory => None,
        }
    }
}

/// What a configuration is built from: the authorities trusted, and this
/// side's certificate chain and key.
pub(crate) struct Material {
    pub(crate) roots: Vec<CertificateDer<'static>>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    /// Who may call a server built from this (none: those `roots` signed).
    pub(crate) callers: Option<Arc<dyn ClientCertVerifier>>,
}

impl Material {
    fn from_files(files: &TlsFiles) -> Result<Material, TlsError> {
        Ok(Material {
            roots: certs(&files.ca)?,
            chain: certs(&files.cert)?,
            key: key(&files.key)?,
            callers: None,
        })
    }

    /// From PEM text: the authorities trusted (one or more certificates),
    /// and an identity they signed.
    pub(crate) fn from_pem(ca_pem: &str, identity: &crate::Issued) -> Result<Material, TlsError> {
        Ok(Material {
            roots: pem_certs("authority certificate", ca_pem)?,
            chain: pem_certs("certificate", &identity.cert_pem)?,
            key: PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
                .map_err(|e| TlsError::Parse { what: "private key".into(), detail: e.to_string() })?,
            callers: None,
        })
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn roots(certs: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::Parse { what: "authority certificate".into(), detail: e.to_string() })?;
    }
    Ok(Arc::new(roots))
}

/// The certificates in PEM text (at least one).
pub(crate) fn pem_certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let parse = |detail: String| TlsError::Parse { what: what.to_string(), detail };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse(e.to_string()))?;
    if certs.is_empty() {
        return Err(parse("no certificate in it".into()));
    }
    Ok(certs)
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

/// A verifier of callers' certificates: signed by one of `roots`.
pub(crate) fn client_verifier(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(self::roots(roots)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// A server that asks every caller for a certificate the authority signed.
/// (Or, when `material.callers` is set, whom that verifier accepts.)
pub(crate) fn server_config(material: &Material) -> Result<ServerConfig, TlsError> {
    let verifier = match &material.callers {
        Some(callers) => callers.clone(),
        None => client_verifier(&material.roots)?,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain.clone(), material.key.clone_key())
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client that shows its certificate and trusts only the authority.
pub(crate) fn client_config(material: &Material) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots(&material.roots)?)
        .with_client_auth_cert(material.chain.clone(), material.key.clone_key())
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
