//! Certificates on Kubernetes, against a mocked API server: a cluster on
//! TLS gets its authority and Secrets before its pods, its pods mount
//! them, and Secrets still good are left alone.

use super::certs::OperatorTls;
use super::tests::*;
use super::*;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const SECRETS: &str = "/api/v1/namespaces/default/secrets";

/// The files of a Secret as the operator wrote it.
fn files(body: &Value) -> BTreeMap<String, String> {
    let secret: Secret = serde_json::from_value(body.clone()).expect("a Secret");
    secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect()
}

/// One reconcile of a new 3-node cluster; `stored` answers the Secrets'
/// GETs (none: 404, and the operator writes them). Returns the Secrets
/// written, by name.
async fn reconcile_on_tls(
    tls: Arc<OperatorTls>,
    runtimes: Arc<FakeRuntimes>,
    secrets: BTreeMap<String, Value>,
) -> (BTreeMap<String, Value>, Value) {
    let (ctx, mut api) = context(runtimes);
    let ctx = Arc::new(Arc::into_inner(ctx).expect("one owner").with_tls(tls));
    let fc = cluster(json!({"nodes": 3}), true, false);
    let server = tokio::spawn(async move {
        let mut written = BTreeMap::new();
        expect_services(&mut api).await;
        api.refuse("GET", STS, 404, "NotFound").await;
        for name in ["demo-ca", "demo-node-tls", "demo-client-tls", "demo-admin-tls"] {
            let path = format!("{SECRETS}/{name}");
            match secrets.get(name) {
                Some(secret) => {
                    api.expect("GET", &path, 200, secret.clone()).await;
                }
                None => {
                    api.refuse("GET", &path, 404, "NotFound").await;
                    let seen = api.expect("PATCH", &path, 200, Value::Null).await;
                    assert!(seen.query.contains("fieldManager=fulva-operator"), "{}", seen.query);
                    assert_eq!(seen.body["metadata"]["ownerReferences"][0]["uid"], "7c1e", "{name}");
                    written.insert(name.to_string(), seen.body);
                }
            }
        }
        let sts = api.expect("PATCH", STS, 200, statefulset(3, 3)).await;
        expect_pods(&mut api, json!([])).await;
        api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await;
        api.expect_silence().await;
        (written, sts.body)
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap()
}

#[tokio::test]
async fn a_cluster_on_tls_gets_an_authority_certificates_and_pods_that_mount_them() {
    let operator_ca = fulva_tls::Authority::generate("operator", fulva_tls::AUTHORITY_VALIDITY).unwrap();
    let tls = Arc::new(OperatorTls::new(operator_ca.cert_pem().to_string()));
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = serving(16);
    let (written, sts) = reconcile_on_tls(tls.clone(), runtimes.clone(), BTreeMap::new()).await;

    let ca = files(&written["demo-ca"]);
    let ca_pem = &ca["ca.crt"];
    assert!(ca.contains_key("ca.key"));
    let nodes = files(&written["demo-node-tls"]);
    assert_eq!(&nodes["ca.crt"], ca_pem, "nodes trust their cluster's authority alone");
    for node in 0..3 {
        let expires = fulva_tls::check_issued(ca_pem, &nodes[&format!("node-{node}.crt")]).unwrap();
        assert!(expires > std::time::SystemTime::now() + certs::RENEW_BEFORE);
        assert!(nodes.contains_key(&format!("node-{node}.key")));
    }
    assert!(!nodes.contains_key("ca.key"), "the authority's key stays in its own Secret");
    for (secret, role) in [("demo-client-tls", "client"), ("demo-admin-tls", "admin")] {
        let data = files(&written[secret]);
        assert!(fulva_tls::check_issued(ca_pem, &data[&format!("{role}.crt")]).is_ok(), "{secret}");
        assert!(
            data["ca.crt"].contains(ca_pem.as_str()) && data["ca.crt"].contains(operator_ca.cert_pem()),
            "{secret}: callers of the control endpoint trust its authority too"
        );
    }

    let pod = &sts["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(var("FULVA_TLS_DIR"), Some(json!("/etc/fulva/tls")));
    assert_eq!(var("FULVA_INSECURE"), None, "no kvnode runs without TLS");
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "tls").unwrap();
    assert_eq!(volume["secret"]["secretName"], "demo-node-tls");
    assert_eq!(volume["secret"]["defaultMode"], 0o440);
    assert_eq!(pod["securityContext"]["fsGroup"], 65532, "the kvnode's group reads its keys");
    assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"], "/etc/fulva/tls");

    // The runtime drives the nodes as the coordinator of this authority,
    // and the control endpoint takes this cluster's clients.
    let identity = runtimes.tls.lock().clone().expect("the runtime gets an identity");
    assert_eq!(identity.role, fulva_tls::Role::Coordinator);
    let client_cert = files(&written["demo-client-tls"])["client.crt"].clone();
    assert!(tls.authorities().signed_pem("default/demo", &client_cert));
    assert!(!tls.authorities().signed_pem("default/other", &client_cert));

    // The next reconcile reads the Secrets, finds them good, writes none,
    // and keeps the identity it holds.
    let (rewritten, _) = reconcile_on_tls(tls.clone(), runtimes.clone(), written).await;
    assert!(rewritten.is_empty(), "nothing renewed: {:?}", rewritten.keys());
    let again = runtimes.tls.lock().clone().unwrap();
    assert!(Arc::ptr_eq(&again.server, &identity.server), "the same identity, not a new one");

    // A deleted cluster's authority is trusted no more.
    tls.forget(&ClusterKey { namespace: "default".into(), name: "demo".into() });
    assert!(!tls.authorities().signed_pem("default/demo", &client_cert));
}

#[tokio::test]
async fn an_operator_without_tls_makes_no_secrets_and_insecure_pods() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = serving(16);
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3}), true, false);
    let server = tokio::spawn(async move {
        expect_services(&mut api).await;
        api.refuse("GET", STS, 404, "NotFound").await;
        let sts = api.expect("PATCH", STS, 200, statefulset(3, 3)).await;
        expect_pods(&mut api, json!([])).await;
        api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await;
        api.expect_silence().await;
        sts.body
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    let sts = server.await.unwrap();
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    assert!(env.iter().any(|e| e["name"] == "FULVA_INSECURE" && e["value"] == "true"));
    assert!(!env.iter().any(|e| e["name"] == "FULVA_TLS_DIR"));
    assert!(runtimes.tls.lock().is_none());
}
