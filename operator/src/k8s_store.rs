//! The shard map kept in a Kubernetes ConfigMap, written with
//! compare-and-set twice over: the stored epoch must be the one the writer
//! read, and the write (a merge patch) names the ConfigMap's resourceVersion,
//! so two operators racing (or a stale one after a failover) cannot both win.

use fulva_coordinator::map_store::{MapStore, MapStoreError};
use fulva_proto::{Epoch, ShardMap};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::Api;
use std::collections::BTreeMap;

/// Key of the map's JSON in the ConfigMap's data.
pub const MAP_KEY: &str = "map.json";
/// Annotation with the stored epoch (for people reading the ConfigMap).
pub const EPOCH_ANNOTATION: &str = "fulva.io/epoch";

/// A shard map in the ConfigMap `name` of one namespace.
pub struct ConfigMapMapStore {
    api: Api<ConfigMap>,
    name: String,
    owner: Option<OwnerReference>,
}

impl ConfigMapMapStore {
    /// The store in ConfigMap `name` through `api` (namespaced); `owner`
    /// (the FulvaCluster) makes Kubernetes delete it with the cluster.
    pub fn new(
        api: Api<ConfigMap>,
        name: impl Into<String>,
        owner: Option<OwnerReference>,
    ) -> ConfigMapMapStore {
        ConfigMapMapStore { api, name: name.into(), owner }
    }

    fn error(&self, message: impl std::fmt::Display) -> MapStoreError {
        MapStoreError::Kubernetes { object: self.name.clone(), message: message.to_string() }
    }

    fn parse(&self, cm: &ConfigMap) -> Result<Option<ShardMap>, MapStoreError> {
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(MAP_KEY)) else { return Ok(None) };
        let corrupt = |reason: String| MapStoreError::Corrupt { path: self.name.clone().into(), reason };
        let map: ShardMap = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
        map.validate().map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(map))
    }

    fn object(&self, map: &ShardMap, resource_version: Option<String>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version,
                annotations: Some(BTreeMap::from([(EPOCH_ANNOTATION.to_string(), map.epoch.to_string())])),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "fulva-operator".to_string(),
                )])),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                MAP_KEY.to_string(),
                serde_json::to_string(map).expect("a shard map always serializes"),
            )])),
            ..ConfigMap::default()
        }
    }
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

#[tonic::async_trait]
impl MapStore for ConfigMapMapStore {
    async fn load(&self) -> Result<Option<ShardMap>, MapStoreError> {
        match crate::k8s::get_if_exists(&self.api, &self.name).await.map_err(|e| self.error(e))? {
            Some(cm) => self.parse(&cm),
            None => Ok(None),
        }
    }

    async fn compare_and_set(&self, expected: Option<Epoch>, map: &ShardMap) -> Result<(), MapStoreError> {
        let current = crate::k8s::get_if_exists(&self.api, &self.name).await.map_err(|e| self.error(e))?;
        let stored = match &current {
            Some(cm) => self.parse(cm)?.map(|m| m.epoch),
            None => None,
        };
        let conflict = |stored: Option<Epoch>| MapStoreError::Conflict {
            expected: expected.unwrap_or(0),
            stored: stored.unwrap_or(0),
        };
        if stored != expected {
            return Err(conflict(stored));
        }
        let result = match current {
            None => self.api.create(&PostParams::default(), &self.object(map, None)).await.map(|_| ()),
            Some(cm) => {
                // Naming the resourceVersion read makes the patch a
                // compare-and-set: the API server answers 409 if it changed.
                let object = self.object(map, cm.metadata.resource_version.clone());
                self.api.patch(&self.name, &PatchParams::default(), &Patch::Merge(&object)).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(()),
            // Someone wrote between our read and our write.
            Err(e) if is_status(&e, 409) => {
                let now = self.load().await.ok().flatten().map(|m| m.epoch);
                Err(conflict(now))
            }
            Err(e) => Err(self.error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::mock_client;
    use fulva_proto::{HashRange, NodeInfo, Shard, ShardState};
    use serde_json::json;

    fn map(epoch: Epoch) -> ShardMap {
        ShardMap {
            epoch,
            nodes: vec![NodeInfo {
                id: 0,
                data_addr: "10.0.0.1:7100".parse().unwrap(),
                control_addr: "10.0.0.1:7101".parse().unwrap(),
            }],
            shards: vec![Shard { range: HashRange::FULL, owner: 0, state: ShardState::Normal }],
        }
    }

    fn stored(epoch: Epoch, rv: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "demo-shard-map", "namespace": "default", "resourceVersion": rv},
            "data": {MAP_KEY: serde_json::to_string(&map(epoch)).unwrap()}
        })
    }

    const PATH: &str = "/api/v1/namespaces/default/configmaps/demo-shard-map";

    #[tokio::test]
    async fn the_map_is_replaced_only_at_the_read_resource_version() {
        let (client, mut api) = mock_client();
        let store = ConfigMapMapStore::new(Api::namespaced(client, "default"), "demo-shard-map", None);
        let server = tokio::spawn(async move {
            // First write: nothing stored, so a create.
            api.refuse("GET", PATH, 404, "NotFound").await;
            let created =
                api.expect("POST", "/api/v1/namespaces/default/configmaps", 201, stored(1, "10")).await;
            assert_eq!(created.body["metadata"]["annotations"][EPOCH_ANNOTATION], "1");
            // Second: replace carrying the resourceVersion read.
            api.expect("GET", PATH, 200, stored(1, "10")).await;
            let replaced = api.expect("PATCH", PATH, 200, stored(2, "11")).await;
            assert_eq!(replaced.body["metadata"]["resourceVersion"], "10");
            // Third: someone else wrote between read and replace.
            api.expect("GET", PATH, 200, stored(2, "11")).await;
            api.refuse("PATCH", PATH, 409, "Conflict").await;
            api.expect("GET", PATH, 200, stored(3, "12")).await;
            // Fourth: a stale writer's epoch no longer matches.
            api.expect("GET", PATH, 200, stored(3, "12")).await;
        });
        store.compare_and_set(None, &map(1)).await.unwrap();
        store.compare_and_set(Some(1), &map(2)).await.unwrap();
        assert!(matches!(
            store.compare_and_set(Some(2), &map(3)).await,
            Err(MapStoreError::Conflict { expected: 2, stored: 3 })
        ));
        assert!(matches!(
            store.compare_and_set(Some(2), &map(3)).await,
            Err(MapStoreError::Conflict { expected: 2, stored: 3 })
        ));
        server.await.unwrap();
    }
}
