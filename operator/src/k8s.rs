//! Small helpers over the Kubernetes API shared by the controller, the
//! shard-map store and leader election.

use kube::Api;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Reads `name`, or `None` when the server answers 404 (whatever reason
/// text it gives, so API emulators that word it differently work too).
pub async fn get_if_exists<K>(api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    match api.get(name).await {
        Ok(object) => Ok(Some(object)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(err) => Err(err),
    }
}

/// Server-side applies `object` as `name`; if the server answers 404 for an
/// object that does not exist yet (Kubernetes creates on apply; some API
/// emulators do not), creates it instead.
pub async fn apply<K>(api: &Api<K>, name: &str, field_manager: &str, object: &K) -> Result<K, kube::Error>
where
    K: Clone + DeserializeOwned + serde::Serialize + Debug,
{
    let params = kube::api::PatchParams::apply(field_manager).force();
    match api.patch(name, &params, &kube::api::Patch::Apply(object)).await {
        Err(kube::Error::Api(status)) if status.code == 404 => {
            api.create(
                &kube::api::PostParams {
                    field_manager: Some(field_manager.to_string()),
                    ..Default::default()
                },
                object,
            )
            .await
        }
        other => other,
    }
}
