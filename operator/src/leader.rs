//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator
//! replicas never drive moves at once. Every write is a compare-and-set on
//! the Lease's resourceVersion; a replica that cannot renew in time stops
//! driving before another may take over (the lease duration is longer than
//! the renewal deadline).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::Api;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One replica's handle on the leader Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    /// The Lease `name` (namespaced `api`) held as `identity` for `duration`.
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        identity: impl Into<String>,
        duration: Duration,
    ) -> LeaseLock {
        LeaseLock { api, name: name.into(), identity: identity.into(), duration }
    }

    /// Takes the Lease if it is free or expired, or renews it if held;
    /// returns whether this replica holds it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(current) = crate::k8s::get_if_exists(&self.api, &self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held_for = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(seconds)));
        let expired = spec.renew_time.as_ref().is_none_or(|t| t.0 + held_for < now);
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        if !mine && !expired && !free {
            return Ok(false);
        }
        let next = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(now)),
            acquire_time: if mine { spec.acquire_time.clone() } else { Some(MicroTime(now)) },
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!mine)),
            ..spec
        };
        // A patch that names the resourceVersion read is a compare-and-set:
        // the API server refuses it (409) if the Lease changed since.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": next,
        });
        match self.api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease (or `shutdown`); returns
    /// whether it does.
    pub async fn acquire(&self, retry: Duration, shutdown: &CancellationToken) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %err, "leader lease"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Renews the Lease every `every` until `shutdown`; cancels `lost` (and
    /// returns) when it has not been renewed for two thirds of its duration.
    pub async fn keep(&self, every: Duration, shutdown: CancellationToken, lost: CancellationToken) {
        let deadline = self.duration * 2 / 3;
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("another replica holds the leader lease; stopping");
                    lost.cancel();
                    return;
                }
                Err(err) => tracing::warn!(error = %err, "could not renew the leader lease"),
            }
            if last.elapsed() > deadline {
                tracing::error!("leader lease not renewed in time; stopping");
                lost.cancel();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::mock_client;
    use serde_json::{json, Value};

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/fulva-system/leases/fulva-operator";

    fn lease(holder: &str, renewed: Timestamp, transitions: i32) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "fulva-operator", "namespace": "fulva-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": MicroTime(renewed), "acquireTime": MicroTime(renewed), "leaseTransitions": transitions}
        })
    }

    #[tokio::test]
    async fn the_lease_is_taken_when_free_or_expired_and_never_from_a_live_holder() {
        let (client, mut api) = mock_client();
        let lock = LeaseLock::new(
            Api::namespaced(client, "fulva-system"),
            "fulva-operator",
            "op-a",
            Duration::from_secs(15),
        );
        let now = Timestamp::now();
        let server = tokio::spawn(async move {
            // Free: created.
            api.refuse("GET", PATH, 404, "NotFound").await;
            let created = api
                .expect(
                    "POST",
                    "/apis/coordination.k8s.io/v1/namespaces/fulva-system/leases",
                    201,
                    Value::Null,
                )
                .await;
            assert_eq!(created.body["spec"]["holderIdentity"], "op-a");
            // Ours: renewed at the read resourceVersion, no new transition.
            api.expect("GET", PATH, 200, lease("op-a", now, 0)).await;
            let renewed = api.expect("PATCH", PATH, 200, lease("op-a", now, 0)).await;
            assert_eq!(renewed.body["metadata"]["resourceVersion"], "7");
            assert_eq!(renewed.body["spec"]["leaseTransitions"], 0);
            // Held by a live replica: left alone (the next request is a read again).
            api.expect("GET", PATH, 200, lease("op-b", now, 3)).await;
            // Held by a replica that stopped renewing: taken over.
            api.expect("GET", PATH, 200, lease("op-b", now - SignedDuration::from_secs(60), 3)).await;
            let taken = api.expect("PATCH", PATH, 200, lease("op-a", now, 4)).await;
            assert_eq!(taken.body["spec"]["holderIdentity"], "op-a");
            assert_eq!(taken.body["spec"]["leaseTransitions"], 4);
            // Someone else won the race to take it: not ours.
            api.expect("GET", PATH, 200, lease("op-b", now - SignedDuration::from_secs(60), 4)).await;
            api.refuse("PATCH", PATH, 409, "Conflict").await;
        });
        assert!(lock.try_acquire_or_renew().await.unwrap());
        assert!(lock.try_acquire_or_renew().await.unwrap());
        assert!(!lock.try_acquire_or_renew().await.unwrap());
        assert!(lock.try_acquire_or_renew().await.unwrap());
        assert!(!lock.try_acquire_or_renew().await.unwrap());
        server.await.unwrap();
    }
}
