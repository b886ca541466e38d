//! A cluster's own small certificate authority: it signs one certificate
//! per identity, and says when a certificate expires so it can be renewed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::{Role, TlsError};

/// How long `fulva certs` and `fulva up` make certificates last by default.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a generated authority lasts.
pub const AUTHORITY_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far back a certificate's validity starts, for clocks that disagree.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// A certificate authority that can sign identities.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// A new authority with a fresh key, self-signed, named after `cluster`.
    pub fn generate(cluster: &str, validity: Duration) -> Result<Authority, TlsError> {
        let key = KeyPair::generate().map_err(TlsError::generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&format!("fulva CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, validity);
        let cert = params.self_signed(&key).map_err(TlsError::generate)?;
        Ok(Authority { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// An authority from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, TlsError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| TlsError::Parse { what: "CA key".into(), detail: e.to_string() })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| TlsError::Parse { what: "CA certificate".into(), detail: e.to_string() })?;
        Ok(Authority { cert_pem: cert_pem.to_string(), issuer })
    }

    /// The authority in `dir` (`ca.crt`, `ca.key`), made there first if
    /// neither file exists.
    pub fn load_or_create(dir: &Path, cluster: &str) -> Result<Authority, TlsError> {
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if cert.exists() || key.exists() {
            return Authority::from_pem(&read(&cert)?, &read(&key)?);
        }
        let authority = Authority::generate(cluster, AUTHORITY_VALIDITY)?;
        fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
        write_file(&cert, &authority.cert_pem, false)?;
        write_file(&key, &authority.key_pem(), true)?;
        Ok(authority)
    }

    /// The authority's certificate (PEM): what every part trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The authority's private key (PEM).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a new key for `role`, valid for `validity` from now. The
    /// certificate serves both ends of a connection: every part is a server
    /// to some and a client of others.
    pub fn issue(&self, role: Role, validity: Duration) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(TlsError::generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&role.file_stem());
        params.subject_alt_names =
            vec![SanType::DnsName(role.dns_name().try_into().map_err(TlsError::generate)?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        set_validity(&mut params, validity);
        let cert = params.signed_by(&key, &self.issuer).map_err(TlsError::generate)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Makes (or reuses) the authority in `dir` and writes a certificate and key
/// for each of `roles` there (`<role>.crt`, `<role>.key`), replacing any
/// that exist. Returns the files written.
pub fn generate_dir(
    dir: &Path,
    cluster: &str,
    roles: &[Role],
    validity: Duration,
) -> Result<Vec<PathBuf>, TlsError> {
    let authority = Authority::load_or_create(dir, cluster)?;
    let mut written = Vec::new();
    for role in roles {
        let issued = authority.issue(*role, validity)?;
        written.extend(write_identity(dir, *role, &issued)?);
    }
    Ok(written)
}

/// Writes `issued` as `role`'s files in `dir`, the key readable by its owner
/// only. Each file is written whole and then renamed into place, so a
/// reader never sees half of one.
pub fn write_identity(dir: &Path, role: Role, issued: &Issued) -> Result<[PathBuf; 2], TlsError> {
    let stem = role.file_stem();
    let (cert, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    write_file(&key, &issued.key_pem, true)?;
    write_file(&cert, &issued.cert_pem, false)?;
    Ok([cert, key])
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "fulva");
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    // Any 16 random bytes make a serial no two certificates share.
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut serial)
        .expect("the system's random source works");
    serial[0] &= 0x7f; // positive
    serial
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|e| TlsError::io(path, e))
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let partial = path.with_extension("partial");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&partial).map_err(|e| TlsError::io(&partial, e))?;
    file.write_all(contents.as_bytes()).map_err(|e| TlsError::io(&partial, e))?;
    file.sync_all().map_err(|e| TlsError::io(&partial, e))?;
    fs::rename(&partial, path).map_err(|e| TlsError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn an_issued_certificate_expires_when_asked_and_the_authority_reloads() {
        let ca = Authority::generate("test", AUTHORITY_VALIDITY).unwrap();
        let issued = ca.issue(Role::Node(7), Duration::from_secs(3600)).unwrap();
        let expires = crate::check_issued(ca.cert_pem(), &issued.cert_pem).unwrap();
        let left = expires.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600), "{left:?}");
        // Reloaded from its PEM, the authority signs certificates the same
        // chain accepts (checked by the handshake tests).
        let again = Authority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn a_directory_keeps_its_authority_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        generate_dir(dir.path(), "t", &[Role::Coordinator], DEFAULT_VALIDITY).unwrap();
        let ca = fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        generate_dir(dir.path(), "t", &[Role::Node(1)], DEFAULT_VALIDITY).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
            ca,
            "the second run reuses the CA"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("node-1.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "a key is readable by its owner only: {mode:o}");
        }
    }
}
