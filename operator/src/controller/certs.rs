//! Certificates on Kubernetes: the operator is each cluster's small
//! certificate authority.
//!
//! Per FulvaCluster it keeps four Secrets, all owned by the FulvaCluster:
//! - `NAME-ca`: the cluster's authority (`ca.crt`, `ca.key`); only the
//!   operator reads it.
//! - `NAME-node-tls`: `ca.crt` and `node-ID.crt`/`.key` for every kvnode,
//!   mounted into every kvnode pod (a StatefulSet's pods share one
//!   template, so one Secret holds them all; each node loads its own).
//! - `NAME-client-tls`: `ca.crt` and `client.crt`/`.key`, for applications
//!   (they may read the shard map).
//! - `NAME-admin-tls`: `ca.crt` and `admin.crt`/`.key`, for the `fulva`
//!   tools (`fulva map`; on Kubernetes, moves are asked for with a
//!   FulvaRebalance: the operator's endpoint takes no admin calls).
//!
//! The `ca.crt` of the client and admin Secrets also holds the authority of
//! the operator's control endpoint, which serves every cluster under one
//! certificate. Certificates last [`CERT_VALIDITY`] and are issued again when
//! less than [`RENEW_BEFORE`] is left, or when another authority signed
//! them; nodes and clients read renewed files without a restart. The
//! operator's own identity towards a cluster's nodes (the coordinator) is
//! issued the same way and held in memory only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fulva_tls::{Authorities, Authority, ClientTls, Issued, Role, ServerTls, Tls};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;

use super::resources;
use super::runtime::ClusterKey;
use super::{Error, FIELD_MANAGER};
use crate::crd::FulvaCluster;

/// How long a certificate the operator issues lasts.
pub const CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// A certificate with less than this left is issued again.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The Secret holding a cluster's authority.
pub fn ca_secret_name(fc: &FulvaCluster) -> String {
    format!("{}-ca", fc.name_any())
}

/// The Secret every kvnode pod mounts.
pub fn node_secret_name(fc: &FulvaCluster) -> String {
    format!("{}-node-tls", fc.name_any())
}

/// The Secret for client applications.
pub fn client_secret_name(fc: &FulvaCluster) -> String {
    format!("{}-client-tls", fc.name_any())
}

/// The Secret for admin tools.
pub fn admin_secret_name(fc: &FulvaCluster) -> String {
    format!("{}-admin-tls", fc.name_any())
}

/// The operator's TLS: the authority of its control endpoint, the cluster
/// authorities that endpoint trusts, and its identity towards each cluster.
pub struct OperatorTls {
    /// The certificate of the authority that signed the control endpoint's
    /// certificate: clients trust it besides their cluster's.
    control_ca_pem: String,
    /// The clusters' authorities by `NAMESPACE/NAME`.
    authorities: Arc<Authorities>,
    /// The coordinator identity the operator holds towards each cluster.
    identities: Mutex<HashMap<ClusterKey, Identity>>,
}

struct Identity {
    tls: Tls,
    ca_pem: String,
    expires: SystemTime,
}

impl OperatorTls {
    /// The operator's TLS, its control endpoint certified by the authority
    /// `control_ca_pem`.
    pub fn new(control_ca_pem: String) -> OperatorTls {
        OperatorTls {
            control_ca_pem,
            authorities: Arc::new(Authorities::default()),
            identities: Mutex::new(HashMap::new()),
        }
    }

    /// The authorities of the clusters: callers of the control endpoint
    /// must come from one, and from the cluster they ask about.
    pub fn authorities(&self) -> &Arc<Authorities> {
        &self.authorities
    }

    /// Makes or renews `fc`'s authority and Secrets (node certificates for
    /// ids `0..nodes`), trusts its authority on the control endpoint, and
    /// returns the operator's coordinator identity towards it.
    pub async fn ensure(
        &self,
        client: &Client,
        fc: &FulvaCluster,
        key: &ClusterKey,
        nodes: u32,
    ) -> Result<Tls, Error> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
        let authority = ensure_authority(&secrets, fc, key).await?;
        let ca_pem = authority.cert_pem().to_string();
        let bundle = self.bundle(&authority);
        let nodes: Vec<Role> = (0..nodes).map(Role::Node).collect();
        ensure_identities(&secrets, fc, &node_secret_name(fc), &authority, &ca_pem, &nodes).await?;
        ensure_identities(&secrets, fc, &client_secret_name(fc), &authority, &bundle, &[Role::Client])
            .await?;
        ensure_identities(&secrets, fc, &admin_secret_name(fc), &authority, &bundle, &[Role::Admin]).await?;
        self.trust(key, &authority)
    }

    /// Trusts `authority` as `key`'s on the control endpoint and returns
    /// the operator's coordinator identity towards `key`'s nodes (the same
    /// one while it is good; renewed in place when it nears its end or the
    /// authority changed).
    pub fn trust(&self, key: &ClusterKey, authority: &Authority) -> Result<Tls, Error> {
        self.authorities.insert(&key.to_string(), authority.cert_pem()).map_err(certificates)?;
        self.coordinator_identity(key, authority, &self.bundle(authority))
    }

    /// What the client and admin Secrets' `ca.crt` holds: the cluster's
    /// authority and the control endpoint's.
    pub fn bundle(&self, authority: &Authority) -> String {
        format!("{}{}", authority.cert_pem(), self.control_ca_pem)
    }

    /// The coordinator identity towards `key`'s nodes, issued again when
    /// the authority changed or it nears its end. Towards nodes it trusts
    /// the cluster's authority; as a client of the control endpoint (the
    /// adaptive rate's probe) also the endpoint's.
    fn coordinator_identity(
        &self,
        key: &ClusterKey,
        authority: &Authority,
        bundle: &str,
    ) -> Result<Tls, Error> {
        let ca_pem = authority.cert_pem();
        let mut identities = self.identities.lock();
        if let Some(held) = identities.get(key) {
            if held.ca_pem == ca_pem && !needs_renewal(held.expires) {
                return Ok(held.tls.clone());
            }
        }
        let issued = authority.issue(Role::Coordinator, CERT_VALIDITY).map_err(certificates)?;
        let expires = fulva_tls::check_issued(ca_pem, &issued.cert_pem).map_err(certificates)?;
        let tls = match identities.get(key) {
            // Renewed in place: the running coordinator's connections pick it up.
            Some(held) => {
                held.tls.server.renew(ca_pem, &issued).map_err(certificates)?;
                held.tls.client.renew(bundle, &issued).map_err(certificates)?;
                held.tls.clone()
            }
            None => Tls {
                role: Role::Coordinator,
                server: ServerTls::from_pem(ca_pem, &issued).map_err(certificates)?,
                client: ClientTls::from_pem(bundle, &issued).map_err(certificates)?,
            },
        };
        tracing::info!(cluster = %key, "coordinator certificate issued");
        identities.insert(key.clone(), Identity { tls: tls.clone(), ca_pem: ca_pem.to_string(), expires });
        Ok(tls)
    }

    /// The control endpoint's certificate, issued by `authority` (whose
    /// certificate is this operator's `control_ca_pem`), for callers from
    /// any cluster's authority; [`OperatorTls::renew_control`] renews it.
    pub fn control_server(&self, authority: &Authority) -> Result<(Arc<ServerTls>, SystemTime), Error> {
        let issued = authority.issue(Role::Coordinator, CERT_VALIDITY).map_err(certificates)?;
        let expires =
            fulva_tls::check_issued(authority.cert_pem(), &issued.cert_pem).map_err(certificates)?;
        let server = ServerTls::for_authorities(authority.cert_pem(), &issued, self.authorities.clone())
            .map_err(certificates)?;
        Ok((server, expires))
    }

    /// Renews the control endpoint's certificate if it nears its end;
    /// returns when the one in use expires.
    pub fn renew_control(
        &self,
        authority: &Authority,
        server: &ServerTls,
        expires: SystemTime,
    ) -> Result<SystemTime, Error> {
        if !needs_renewal(expires) {
            return Ok(expires);
        }
        let issued = authority.issue(Role::Coordinator, CERT_VALIDITY).map_err(certificates)?;
        server.renew(authority.cert_pem(), &issued).map_err(certificates)?;
        tracing::info!("control endpoint certificate renewed");
        fulva_tls::check_issued(authority.cert_pem(), &issued.cert_pem).map_err(certificates)
    }

    /// Forgets a deleted cluster (its Secrets go with it, by owner).
    pub fn forget(&self, key: &ClusterKey) {
        self.authorities.remove(&key.to_string());
        self.identities.lock().remove(key);
    }
}

fn certificates(err: fulva_tls::TlsError) -> Error {
    Error::Certificates(err.to_string())
}

fn needs_renewal(expires: SystemTime) -> bool {
    expires.duration_since(SystemTime::now()).map_or(true, |left| left < RENEW_BEFORE)
}

/// The cluster's authority from its Secret, made (and stored) first if the
/// Secret does not exist.
async fn ensure_authority(
    secrets: &Api<Secret>,
    fc: &FulvaCluster,
    key: &ClusterKey,
) -> Result<Authority, Error> {
    let name = ca_secret_name(fc);
    let metadata = resources::metadata(fc, name.clone());
    load_or_create_authority(secrets, &name, metadata, &key.to_string()).await
}

/// The authority of the operator's control endpoint, from the Secret
/// `name` in the operator's namespace (made there first if missing).
pub async fn operator_authority(client: &Client, namespace: &str, name: &str) -> Result<Authority, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([("app.kubernetes.io/name".to_string(), "fulva-operator".to_string())])),
        ..ObjectMeta::default()
    };
    load_or_create_authority(&secrets, name, metadata, "operator control endpoint").await
}

/// The authority in the Secret `name`, made (and stored) first if the
/// Secret does not exist. A Secret that does not hold a usable authority is
/// an error, never replaced: every certificate it signed hangs on it.
async fn load_or_create_authority(
    secrets: &Api<Secret>,
    name: &str,
    metadata: ObjectMeta,
    label: &str,
) -> Result<Authority, Error> {
    if let Some(secret) = crate::k8s::get_if_exists(secrets, name).await? {
        let data = secret.data.unwrap_or_default();
        let text = |file: &str| {
            data.get(file)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .ok_or_else(|| Error::Certificates(format!("Secret {name} has no {file}")))
        };
        return Authority::from_pem(&text("ca.crt")?, &text("ca.key")?)
            .map_err(|e| Error::Certificates(format!("Secret {name}: {e}")));
    }
    let authority = Authority::generate(label, fulva_tls::AUTHORITY_VALIDITY).map_err(certificates)?;
    let data = BTreeMap::from([
        ("ca.crt".to_string(), authority.cert_pem().to_string()),
        ("ca.key".to_string(), authority.key_pem()),
    ]);
    crate::k8s::apply(secrets, name, FIELD_MANAGER, &secret(metadata, data)).await?;
    tracing::info!(secret = %name, "made a certificate authority for {label}");
    Ok(authority)
}

/// Makes the Secret `name` hold `ca.crt` (`trusted`) and a certificate and
/// key for each of `roles`, keeping those still good and issuing the rest.
/// Writes only when something changed.
async fn ensure_identities(
    secrets: &Api<Secret>,
    fc: &FulvaCluster,
    name: &str,
    authority: &Authority,
    trusted: &str,
    roles: &[Role],
) -> Result<(), Error> {
    let existing = crate::k8s::get_if_exists(secrets, name).await?;
    let current: BTreeMap<String, String> = existing
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
        .collect();
    let (wanted, issued) = identities(authority, trusted, roles, &current)?;
    if wanted != current {
        let metadata = resources::metadata(fc, name.to_string());
        crate::k8s::apply(secrets, name, FIELD_MANAGER, &secret(metadata, wanted)).await?;
        tracing::info!(secret = %name, issued, "certificates written");
    }
    Ok(())
}

/// What a Secret of `roles`' identities should hold, given what it holds:
/// the certificates still good (signed by `authority`, with more than
/// [`RENEW_BEFORE`] left) are kept, the others issued. Returns the data and
/// how many were issued.
pub fn identities(
    authority: &Authority,
    trusted: &str,
    roles: &[Role],
    current: &BTreeMap<String, String>,
) -> Result<(BTreeMap<String, String>, usize), Error> {
    let mut wanted = BTreeMap::from([("ca.crt".to_string(), trusted.to_string())]);
    let mut issued = 0;
    for role in roles {
        let (cert, key) = (format!("{}.crt", role.file_stem()), format!("{}.key", role.file_stem()));
        let kept = match (current.get(&cert), current.get(&key)) {
            (Some(c), Some(k)) => fulva_tls::check_issued(authority.cert_pem(), c)
                .is_ok_and(|expires| !needs_renewal(expires))
                .then(|| Issued { cert_pem: c.clone(), key_pem: k.clone() }),
            _ => None,
        };
        let identity = match kept {
            Some(identity) => identity,
            None => {
                issued += 1;
                authority.issue(*role, CERT_VALIDITY).map_err(certificates)?
            }
        };
        wanted.insert(cert, identity.cert_pem);
        wanted.insert(key, identity.key_pem);
    }
    Ok((wanted, issued))
}

fn secret(
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    data: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata,
        type_: Some("Opaque".to_string()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_certificates_are_kept_and_the_rest_issued() {
        let authority = Authority::generate("t", fulva_tls::AUTHORITY_VALIDITY).unwrap();
        let other = Authority::generate("other", fulva_tls::AUTHORITY_VALIDITY).unwrap();
        let roles = [Role::Node(0), Role::Node(1), Role::Node(2)];
        let (first, issued) = identities(&authority, authority.cert_pem(), &roles, &BTreeMap::new()).unwrap();
        assert_eq!(issued, 3);
        assert_eq!(first.len(), 7, "ca.crt and a pair per node: {:?}", first.keys());

        let (again, issued) = identities(&authority, authority.cert_pem(), &roles, &first).unwrap();
        assert_eq!((issued, &again), (0, &first), "nothing to renew: the Secret is left alone");

        let mut stale = first.clone();
        // node-1's certificate near its end, node-2's from another authority.
        let near_end = authority.issue(Role::Node(1), RENEW_BEFORE - Duration::from_secs(60)).unwrap();
        stale.insert("node-1.crt".into(), near_end.cert_pem);
        stale.insert("node-1.key".into(), near_end.key_pem);
        let foreign = other.issue(Role::Node(2), CERT_VALIDITY).unwrap();
        stale.insert("node-2.crt".into(), foreign.cert_pem.clone());
        stale.remove("node-0.key");
        let (renewed, issued) = identities(&authority, authority.cert_pem(), &roles, &stale).unwrap();
        assert_eq!(issued, 3, "a missing key, a certificate near its end, one from another authority");
        for node in 0..3 {
            let cert = &renewed[&format!("node-{node}.crt")];
            let expires = fulva_tls::check_issued(authority.cert_pem(), cert).unwrap();
            assert!(!needs_renewal(expires), "node-{node}");
        }
        assert_ne!(renewed["node-2.crt"], foreign.cert_pem);

        // Scaled in: the Secret holds only the nodes asked for.
        let (fewer, _) = identities(&authority, authority.cert_pem(), &roles[..1], &renewed).unwrap();
        assert!(!fewer.contains_key("node-2.crt"));
        assert_eq!(fewer["node-0.crt"], renewed["node-0.crt"]);
    }
}
