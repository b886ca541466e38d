//! The Kubernetes objects a FulvaCluster owns, built from its spec.

use crate::crd::{DataPathMode, FulvaCluster};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// UDP port of the data path.
pub const DATA_PORT: i32 = 7100;
/// gRPC port of a node's control service.
pub const NODE_CONTROL_PORT: i32 = 7101;
/// HTTP port of a node's /metrics and health endpoints.
pub const METRICS_PORT: i32 = 9100;

/// Names of the objects of one cluster.
pub fn statefulset_name(fc: &FulvaCluster) -> String {
    fc.name_any()
}

/// The headless Service giving the kvnode pods stable names.
pub fn nodes_service_name(fc: &FulvaCluster) -> String {
    format!("{}-nodes", fc.name_any())
}

/// The Service clients reach the control endpoint by.
pub fn control_service_name(fc: &FulvaCluster) -> String {
    format!("{}-control", fc.name_any())
}

/// The ConfigMap holding the shard map.
pub fn shard_map_name(fc: &FulvaCluster) -> String {
    format!("{}-shard-map", fc.name_any())
}

/// Labels of every object and pod of the cluster.
pub fn labels(fc: &FulvaCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "fulva".to_string()),
        ("app.kubernetes.io/instance".to_string(), fc.name_any()),
        ("app.kubernetes.io/component".to_string(), "kvnode".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "fulva-operator".to_string()),
    ])
}

fn metadata(fc: &FulvaCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: fc.namespace(),
        labels: Some(labels(fc)),
        owner_references: fc.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn port(name: &str, port: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        protocol: Some(protocol.to_string()),
        target_port: Some(IntOrString::Int(port)),
        ..ServicePort::default()
    }
}

/// The headless Service of the kvnode pods (stable DNS per pod, ready or not:
/// the operator decides when a node serves).
pub fn nodes_service(fc: &FulvaCluster) -> Service {
    Service {
        metadata: metadata(fc, nodes_service_name(fc)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(labels(fc)),
            ports: Some(vec![
                port("data", DATA_PORT, "UDP"),
                port("control", NODE_CONTROL_PORT, "TCP"),
                port("metrics", METRICS_PORT, "TCP"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The control endpoint of this cluster: an alias (ExternalName) of the
/// operator's Service, which serves the shard map of every cluster it runs.
pub fn control_service(fc: &FulvaCluster, operator_service_host: &str) -> Service {
    Service {
        metadata: metadata(fc, control_service_name(fc)),
        spec: Some(ServiceSpec {
            type_: Some("ExternalName".to_string()),
            external_name: Some(operator_service_host.to_string()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn env_var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.into()), ..EnvVar::default() }
}

/// The StatefulSet of kvnodes with `replicas` pods.
pub fn statefulset(fc: &FulvaCluster, replicas: u32) -> StatefulSet {
    let spec = &fc.spec;
    let dpdk = spec.data_path.mode == DataPathMode::Dpdk;
    let mut resources = spec.resources.clone().unwrap_or_default();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut annotations = BTreeMap::new();
    let mut env = vec![
        env_var("FULVA_DATA_ADDR", format!("0.0.0.0:{DATA_PORT}")),
        env_var("FULVA_CONTROL_ADDR", format!("0.0.0.0:{NODE_CONTROL_PORT}")),
        env_var("FULVA_METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}")),
        env_var("FULVA_WORKERS", spec.workers.to_string()),
        EnvVar {
            name: "FULVA_POD_NAME".to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ];
    let security = if dpdk {
        let resource = spec.data_path.sriov_resource_name.clone().unwrap_or_default();
        let hugepages = Quantity(spec.data_path.hugepages.clone().unwrap_or_default());
        for list in [&mut resources.requests, &mut resources.limits] {
            let list = list.get_or_insert_with(BTreeMap::new);
            list.insert(resource.clone(), Quantity("1".to_string()));
            list.insert("hugepages-2Mi".to_string(), hugepages.clone());
        }
        if let Some(network) = &spec.data_path.network_attachment {
            annotations.insert("k8s.v1.cni.cncf.io/networks".to_string(), network.clone());
        }
        env.push(env_var("FULVA_TRANSPORT", "dpdk"));
        env.push(env_var("FULVA_SRIOV_RESOURCE", resource));
        volumes.push(Volume {
            name: "hugepages".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("HugePages".to_string()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "hugepages".to_string(),
            mount_path: "/dev/hugepages".to_string(),
            ..VolumeMount::default()
        });
        SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["IPC_LOCK".to_string(), "NET_RAW".to_string()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }
    } else {
        SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }
    };
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(METRICS_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    let container = Container {
        name: "kvnode".to_string(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("data".into()),
                container_port: DATA_PORT,
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("control".into()),
                container_port: NODE_CONTROL_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: METRICS_PORT,
                ..Default::default()
            },
        ]),
        resources: Some(ResourceRequirements { ..resources }),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        security_context: Some(security),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Container::default()
    };
    StatefulSet {
        metadata: metadata(fc, statefulset_name(fc)),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas as i32),
            service_name: Some(nodes_service_name(fc)),
            // Nodes start together; data lives in memory, so no volumes to wait for.
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector { match_labels: Some(labels(fc)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(fc)),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    security_context: (!dpdk).then(|| PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}
