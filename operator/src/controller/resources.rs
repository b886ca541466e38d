//! The Kubernetes objects a FulvaCluster owns, built from its spec.

use crate::crd::{DataPathMode, FulvaCluster};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
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
/// TCP port of a node's transfer stream (a move's destination pulls here).
pub const TRANSFER_PORT: i32 = 7102;
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

pub(crate) fn metadata(fc: &FulvaCluster, name: String) -> ObjectMeta {
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

/// The PodDisruptionBudget of the kvnode pods.
pub fn disruption_budget_name(fc: &FulvaCluster) -> String {
    format!("{}-kvnodes", fc.name_any())
}

/// The NetworkPolicy of the kvnode pods.
pub fn network_policy_name(fc: &FulvaCluster) -> String {
    format!("{}-kvnodes", fc.name_any())
}

/// Labels of the operator's pods (as the chart sets them).
pub fn operator_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "fulva".to_string()),
        ("app.kubernetes.io/component".to_string(), "operator".to_string()),
    ])
}

/// Who may reach the kvnodes (see [`crate::crd::NetworkPolicySpec`]); the
/// operator's pods are those with [`operator_labels`] in `operator_namespace`.
pub fn network_policy(fc: &FulvaCluster, operator_namespace: &str) -> NetworkPolicy {
    let port = |port: i32, protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some(protocol.to_string()),
        ..NetworkPolicyPort::default()
    };
    let selector = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(selector(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            operator_namespace.to_string(),
        )]))),
        pod_selector: Some(selector(operator_labels())),
        ..NetworkPolicyPeer::default()
    };
    let mut clients = vec![NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    }];
    if let Some(namespaces) = &fc.spec.network_policy.client_namespace_selector {
        clients.push(NetworkPolicyPeer {
            namespace_selector: Some(namespaces.clone()),
            ..NetworkPolicyPeer::default()
        });
    }
    let kvnodes =
        NetworkPolicyPeer { pod_selector: Some(selector(labels(fc))), ..NetworkPolicyPeer::default() };
    NetworkPolicy {
        metadata: metadata(fc, network_policy_name(fc)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(labels(fc))),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule { ports: Some(vec![port(DATA_PORT, "UDP")]), from: Some(clients) },
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(NODE_CONTROL_PORT, "TCP")]),
                    from: Some(vec![operator.clone()]),
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(TRANSFER_PORT, "TCP")]),
                    from: Some(vec![kvnodes, operator]),
                },
                // Metrics scrapes and the kubelet's probes.
                NetworkPolicyIngressRule { ports: Some(vec![port(METRICS_PORT, "TCP")]), from: None },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// How long a kvnode told to stop keeps serving the ranges it holds: the
/// grace period less ten seconds (to log and exit before the SIGKILL).
pub fn shutdown_wait_secs(grace: u32) -> u32 {
    grace.saturating_sub(10).max(1)
}

/// No eviction of a kvnode pod is allowed (maxUnavailable 0): an evicted pod
/// would take its objects with it. `kubectl drain` waits while the operator,
/// seeing the Node cordoned, moves the pod's ranges away and deletes it.
pub fn disruption_budget(fc: &FulvaCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(fc, disruption_budget_name(fc)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(0)),
            selector: Some(LabelSelector { match_labels: Some(labels(fc)), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
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
                port("transfer", TRANSFER_PORT, "TCP"),
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

/// Where a kvnode pod finds its certificates (the cluster's node Secret).
pub const TLS_MOUNT: &str = "/etc/fulva/tls";

/// The StatefulSet of kvnodes with `replicas` pods; with `tls`, each pod
/// mounts the node Secret (`certs::node_secret_name`) and takes control
/// calls and pulls over mutual TLS only.
pub fn statefulset(fc: &FulvaCluster, replicas: u32, tls: bool) -> StatefulSet {
    let spec = &fc.spec;
    let dpdk = spec.data_path.mode == DataPathMode::Dpdk;
    let mut env = Vec::new();
    let mut resources = spec.resources.clone().unwrap_or_default();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut annotations = BTreeMap::new();
    env.extend([
        env_var("FULVA_DATA_ADDR", format!("0.0.0.0:{DATA_PORT}")),
        env_var("FULVA_CONTROL_ADDR", format!("0.0.0.0:{NODE_CONTROL_PORT}")),
        env_var("FULVA_METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}")),
        env_var("FULVA_TRANSFER_ADDR", format!("0.0.0.0:{TRANSFER_PORT}")),
        env_var("FULVA_WORKERS", spec.workers.to_string()),
        // Told to stop while holding ranges, a node serves them until the
        // operator has moved them away, ending a little before the kubelet's SIGKILL.
        env_var(
            "FULVA_SHUTDOWN_WAIT_SECS",
            shutdown_wait_secs(spec.update.termination_grace_period_seconds).to_string(),
        ),
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
    ]);
    if tls {
        env.push(env_var("FULVA_TLS_DIR", TLS_MOUNT));
        volumes.push(Volume {
            name: "tls".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(super::certs::node_secret_name(fc)),
                // Keys readable by the kvnode's group only (fsGroup below).
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "tls".to_string(),
            mount_path: TLS_MOUNT.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    } else {
        // An operator run with --insecure: the control plane runs without
        // TLS, behind the kvnodes' NetworkPolicy (docs/security.md).
        env.push(env_var("FULVA_INSECURE", "true"));
    }
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
        // DPDK runs as root (the image's default user) holding only what it
        // needs: IPC_LOCK to pin hugepage memory, NET_RAW for the VF's raw
        // packets. Every other capability is dropped and nothing escalates.
        SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: Some(vec!["IPC_LOCK".to_string(), "NET_RAW".to_string()]),
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
                name: Some("transfer".into()),
                container_port: TRANSFER_PORT,
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
            // The operator replaces pods itself, each after its ranges moved away
            // (a rolling update by the StatefulSet would lose every object).
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                ..StatefulSetUpdateStrategy::default()
            }),
            selector: LabelSelector { match_labels: Some(labels(fc)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(fc)),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    termination_grace_period_seconds: Some(
                        spec.update.termination_grace_period_seconds.into(),
                    ),
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    // kvnodes call no Kubernetes API: no token is mounted.
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: (!dpdk).then_some(true),
                        run_as_user: (!dpdk).then_some(65532),
                        fs_group: (!dpdk).then_some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..SeccompProfile::default()
                        }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(spec: serde_json::Value) -> FulvaCluster {
        serde_json::from_value(json!({
            "apiVersion": "fulva.io/v1alpha1", "kind": "FulvaCluster",
            "metadata": {"name": "demo", "namespace": "apps", "uid": "u1"}, "spec": spec
        }))
        .unwrap()
    }

    fn pod(sts: &StatefulSet) -> PodSpec {
        sts.spec.as_ref().unwrap().template.spec.clone().unwrap()
    }

    #[test]
    fn pods_are_replaced_by_the_operator_and_no_eviction_is_allowed() {
        let fc = cluster(json!({"nodes": 3, "update": {"terminationGracePeriodSeconds": 120}}));
        let sts = statefulset(&fc, 3, false);
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.update_strategy.as_ref().unwrap().type_.as_deref(), Some("OnDelete"));
        let pod = pod(&sts);
        assert_eq!(pod.termination_grace_period_seconds, Some(120));
        let env = pod.containers[0].env.clone().unwrap();
        let wait = env.iter().find(|e| e.name == "FULVA_SHUTDOWN_WAIT_SECS").unwrap();
        assert_eq!(wait.value.as_deref(), Some("110"), "the node stops serving before the SIGKILL");
        let pdb = disruption_budget(&fc);
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(spec.selector.unwrap().match_labels, Some(labels(&fc)));
        assert_eq!(pdb.metadata.owner_references.unwrap()[0].uid, "u1");
    }

    #[test]
    fn the_kvnodes_take_control_calls_from_the_operator_only_and_data_from_client_namespaces() {
        let fc = cluster(
            json!({"nodes": 3, "networkPolicy": {"clientNamespaceSelector": {"matchLabels": {"fulva-client": "yes"}}}}),
        );
        let policy = serde_json::to_value(network_policy(&fc, "fulva-system")).unwrap();
        assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "kvnode");
        let rules = policy["spec"]["ingress"].as_array().unwrap();
        let rule_for = |port: i32| rules.iter().find(|r| r["ports"][0]["port"] == port).unwrap().clone();
        let data = rule_for(DATA_PORT);
        assert_eq!(data["ports"][0]["protocol"], "UDP");
        assert_eq!(data["from"][0], json!({"podSelector": {}}), "the cluster's own namespace");
        assert_eq!(data["from"][1]["namespaceSelector"]["matchLabels"]["fulva-client"], "yes");
        let control = rule_for(NODE_CONTROL_PORT);
        assert_eq!(control["from"].as_array().unwrap().len(), 1, "the operator only");
        assert_eq!(
            control["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "fulva-system"
        );
        assert_eq!(
            control["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "operator"
        );
        let transfer = rule_for(TRANSFER_PORT);
        assert_eq!(transfer["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"], "demo");
        assert!(rule_for(METRICS_PORT).get("from").is_none(), "metrics and probes from anywhere");
        // Without a client selector: the cluster's namespace only.
        let plain = serde_json::to_value(network_policy(&cluster(json!({"nodes": 3})), "ops")).unwrap();
        let rules = plain["spec"]["ingress"].as_array().unwrap();
        assert_eq!(rules[0]["from"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn kernel_mode_pods_are_locked_down() {
        let sts = statefulset(&cluster(json!({"nodes": 3})), 3, false);
        let pod = pod(&sts);
        let security = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert!(pod.volumes.is_none());
        assert_eq!(sts.metadata.owner_references.unwrap()[0].uid, "u1");
        assert_eq!(pod.automount_service_account_token, Some(false), "a kvnode calls no Kubernetes API");
        let pod_security = pod.security_context.unwrap();
        assert_eq!(pod_security.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_eq!(pod_security.run_as_user, Some(65532));
    }

    #[test]
    fn dpdk_mode_pods_get_the_vf_hugepages_and_capabilities() {
        let fc = cluster(json!({"nodes": 2, "dataPath": {
            "mode": "dpdk", "sriovResourceName": "intel.com/sriov_netdevice",
            "networkAttachment": "sriov-net", "hugepages": "2Gi"}}));
        let sts = statefulset(&fc, 2, false);
        let template = sts.spec.as_ref().unwrap().template.clone();
        let annotations = template.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations["k8s.v1.cni.cncf.io/networks"], "sriov-net");
        let pod = pod(&sts);
        let container = &pod.containers[0];
        let requests = container.resources.clone().unwrap().requests.unwrap();
        assert_eq!(requests["intel.com/sriov_netdevice"], Quantity("1".into()));
        assert_eq!(requests["hugepages-2Mi"], Quantity("2Gi".into()));
        let security = container.security_context.clone().unwrap();
        let capabilities = security.capabilities.unwrap();
        assert_eq!(capabilities.drop, Some(vec!["ALL".to_string()]), "everything else is dropped");
        assert_eq!(capabilities.add.unwrap(), vec!["IPC_LOCK".to_string(), "NET_RAW".to_string()]);
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.security_context.clone().unwrap().seccomp_profile.unwrap().type_, "RuntimeDefault");
        let volume = &pod.volumes.unwrap()[0];
        assert_eq!(volume.empty_dir.clone().unwrap().medium.as_deref(), Some("HugePages"));
        let env: Vec<_> = container.env.clone().unwrap().into_iter().map(|e| e.name).collect();
        assert!(env.contains(&"FULVA_SRIOV_RESOURCE".to_string()), "{env:?}");
    }
}
