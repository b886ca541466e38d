//! Trust in more than one authority at a time: an endpoint that serves
//! many clusters (the operator's control endpoint) accepts a caller any of
//! their authorities signed, and then checks per call that the caller's
//! authority is the one of the cluster it asks about.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::config::{client_verifier, pem_certs, provider};
use crate::TlsError;

/// Authorities by name (a cluster's `namespace/name`), changed while the
/// server runs. As a [`ClientCertVerifier`] it accepts a certificate any
/// of them signed; [`Authorities::signed`] says which one did.
pub struct Authorities {
    by_name: RwLock<HashMap<String, Arc<dyn ClientCertVerifier>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for Authorities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = self.by_name.read().keys().cloned().collect();
        names.sort();
        f.debug_struct("Authorities").field("names", &names).finish()
    }
}

impl Default for Authorities {
    fn default() -> Self {
        Authorities { by_name: RwLock::default(), algorithms: provider().signature_verification_algorithms }
    }
}

impl Authorities {
    /// Trusts `ca_pem` under `name`, in place of what `name` had.
    pub fn insert(&self, name: &str, ca_pem: &str) -> Result<(), TlsError> {
        let verifier = client_verifier(&pem_certs("authority certificate", ca_pem)?)?;
        self.by_name.write().insert(name.to_string(), verifier);
        Ok(())
    }

    /// Stops trusting `name`'s authority.
    pub fn remove(&self, name: &str) {
        self.by_name.write().remove(name);
    }

    /// Whether `chain` (own certificate first) is signed by `name`'s
    /// authority and valid now.
    pub fn signed(&self, name: &str, chain: &[CertificateDer<'_>]) -> bool {
        let Some((own, intermediates)) = chain.split_first() else { return false };
        let Some(verifier) = self.by_name.read().get(name).cloned() else { return false };
        verifier.verify_client_cert(own, intermediates, UnixTime::now()).is_ok()
    }
}

impl Authorities {
    /// [`Authorities::signed`] for a certificate chain in PEM.
    pub fn signed_pem(&self, name: &str, chain_pem: &str) -> bool {
        pem_certs("certificate", chain_pem).is_ok_and(|chain| self.signed(name, &chain))
    }
}

impl ClientCertVerifier for Authorities {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifiers: Vec<Arc<dyn ClientCertVerifier>> = self.by_name.read().values().cloned().collect();
        let mut last = rustls::Error::General("no cluster's authority is trusted here yet".into());
        for verifier in verifiers {
            match verifier.verify_client_cert(end_entity, intermediates, now) {
                Ok(verified) => return Ok(verified),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Checks that `cert_pem` was signed by the authority `ca_pem` and is valid
/// now; returns when it stops being valid. What renews certificates before
/// they expire asks this of each one it holds.
pub fn check_issued(ca_pem: &str, cert_pem: &str) -> Result<SystemTime, TlsError> {
    let chain = pem_certs("certificate", cert_pem)?;
    let verifier = client_verifier(&pem_certs("authority certificate", ca_pem)?)?;
    let (own, intermediates) = chain.split_first().expect("pem_certs returns at least one");
    verifier
        .verify_client_cert(own, intermediates, UnixTime::now())
        .map_err(|e| TlsError::Parse { what: "certificate".into(), detail: e.to_string() })?;
    let parse = |detail: String| TlsError::Parse { what: "certificate".into(), detail };
    let (_, cert) = x509_parser::parse_x509_certificate(own.as_ref()).map_err(|e| parse(e.to_string()))?;
    let secs = cert.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, Role, AUTHORITY_VALIDITY};

    #[test]
    fn a_certificate_is_checked_against_its_own_authority() {
        let a = Authority::generate("a", AUTHORITY_VALIDITY).unwrap();
        let b = Authority::generate("b", AUTHORITY_VALIDITY).unwrap();
        let issued = a.issue(Role::Client, Duration::from_secs(3600)).unwrap();
        let expires = check_issued(a.cert_pem(), &issued.cert_pem).unwrap();
        let left = expires.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600), "{left:?}");
        assert!(check_issued(b.cert_pem(), &issued.cert_pem).is_err(), "another authority's");

        let authorities = Authorities::default();
        let chain = pem_certs("c", &issued.cert_pem).unwrap();
        assert!(!authorities.signed("ns/a", &chain), "nothing trusted yet");
        authorities.insert("ns/a", a.cert_pem()).unwrap();
        authorities.insert("ns/b", b.cert_pem()).unwrap();
        assert!(authorities.signed("ns/a", &chain));
        assert!(!authorities.signed("ns/b", &chain), "b did not sign it");
        assert!(authorities.verify_client_cert(&chain[0], &[], UnixTime::now()).is_ok());
        authorities.remove("ns/a");
        assert!(!authorities.signed("ns/a", &chain));
        assert!(authorities.verify_client_cert(&chain[0], &[], UnixTime::now()).is_err());
    }
}
