"""End-to-end run of the real `fulva-operator` binary against kmock's
KubernetesEmulator (an in-memory Kubernetes API over HTTP on loopback).

1. A FulvaCluster is stored in the emulator; the operator must take the
   leader Lease, add its finalizer, make its control endpoint's authority
   and the cluster's authority and certificate Secrets, create the
   StatefulSet (whose pods mount the node Secret) and the Services, and
   write status.
2. A rolling update on mutual TLS: three kvnode pods are stored with
   loopback IPs (127.0.0.21-23); once the operator has written the node
   Secret, its files are laid out as the kubelet would mount them and three
   real `fulva-kvnode` processes start on those addresses (the ports the
   operator expects) with `--tls-dir` there. The StatefulSet's status names
   a new revision the pods do not have. The operator must bootstrap the shard
   map over the real nodes, drain the highest-ordinal pod with live moves and
   delete it only once the map gives its node nothing. kmock runs no pods:
   nothing recreates the deleted pod, so the update stops there.

Exit code 0 when all of that happened, 1 with the reason otherwise.

    python3 tests/e2e/kmock_operator.py target/debug/fulva-operator [target/debug/fulva-kvnode]
"""

import asyncio
import base64
import json
import os
import shutil
import socket
import sys
import tempfile

import kmock

CLUSTERS = kmock.resource("fulva.io", "v1alpha1", "fulvaclusters")
REBALANCES = kmock.resource("fulva.io", "v1alpha1", "fulvarebalances")
STATEFULSETS = kmock.resource("apps", "v1", "statefulsets")
SERVICES = kmock.resource("", "v1", "services")
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")
SECRETS = kmock.resource("", "v1", "secrets")


def mount_secret(secret: dict, directory: str) -> None:
    """Writes a Secret's files as the kubelet mounts them."""
    for name, value in (secret.get("data") or {}).items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(base64.b64decode(value))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubeconfig(url: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
    })


def fulva_cluster(spec: dict) -> dict:
    """The stored FulvaCluster `demo`. kmock applies a JSON-patch `test`
    strictly (a missing member is not null), which the finalizer's first add
    relies on; with a finalizer already there, the add takes the other path."""
    return {
        "apiVersion": "fulva.io/v1alpha1", "kind": "FulvaCluster",
        "metadata": {"name": "demo", "namespace": "default", "uid": "e2e-uid", "generation": 1,
                     "resourceVersion": "1", "finalizers": ["e2e.example/keep"]},
        "spec": spec,
    }


async def start_operator(binary: str, server):
    """Starts the operator against `server`; returns it and its kubeconfig's path."""
    with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as f:
        f.write(kubeconfig(str(server.url).rstrip("/")))
    env = dict(os.environ, KUBECONFIG=f.name, POD_NAMESPACE="default", POD_NAME="e2e-operator",
               RUST_LOG=os.environ.get("RUST_LOG", "info"),
               FULVA_OPERATOR_HTTP_ADDR=f"127.0.0.1:{free_port()}",
               FULVA_OPERATOR_CONTROL_ADDR=f"127.0.0.1:{free_port()}")
    return await asyncio.create_subprocess_exec(binary, env=env), f.name


def get(k, resource, name, namespace="default"):
    for (res, ns, n), obj in list(k.objects.items()):
        if res == resource and ns == namespace and n == name and not obj.deleted:
            return obj.raw
    return None


async def main(binary: str) -> int:
    async with kmock.KubernetesEmulator() as k, kmock.Server(k) as server:
        # kmock serves only the resources declared to it.
        for resource in ["fulva.io/v1alpha1/fulvaclusters", "fulva.io/v1alpha1/fulvarebalances", "apps/v1/statefulsets", "v1/services", "v1/pods",
                         "v1/configmaps", "v1/secrets", "coordination.k8s.io/v1/leases", "events.k8s.io/v1/events"]:
            k.resources[resource] = {}
        k.objects[CLUSTERS, "default", "demo"] = fulva_cluster({"nodes": 3, "initialShards": 6})
        k.objects[REBALANCES, "default", "spread"] = {
            "apiVersion": "fulva.io/v1alpha1", "kind": "FulvaRebalance",
            "metadata": {"name": "spread", "namespace": "default", "uid": "e2e-rb", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"cluster": "demo", "goal": "full"},
        }
        proc, config = await start_operator(binary, server)
        checks = {}
        try:
            for _ in range(150):  # 15 s at most
                await asyncio.sleep(0.1)
                fc = get(k, CLUSTERS, "demo") or {}
                checks = {
                    "leader lease taken": (get(k, LEASES, "fulva-operator") or {}).get("spec", {}).get("holderIdentity") == "e2e-operator",
                    "finalizer added": "fulva.io/cleanup" in fc.get("metadata", {}).get("finalizers", []),
                    "headless service": get(k, SERVICES, "demo-nodes") is not None,
                    "control service": get(k, SERVICES, "demo-control") is not None,
                    "statefulset with 3 replicas": (get(k, STATEFULSETS, "demo") or {}).get("spec", {}).get("replicas") == 3,
                    "control endpoint authority": "ca.key" in ((get(k, SECRETS, "fulva-operator-ca") or {}).get("data") or {}),
                    "cluster authority": "ca.key" in ((get(k, SECRETS, "demo-ca") or {}).get("data") or {}),
                    "node certificates": all(f"node-{i}.crt" in ((get(k, SECRETS, "demo-node-tls") or {}).get("data") or {})
                                             for i in range(3)),
                    "client and admin certificates": "client.crt" in ((get(k, SECRETS, "demo-client-tls") or {}).get("data") or {})
                                                     and "admin.crt" in ((get(k, SECRETS, "demo-admin-tls") or {}).get("data") or {}),
                    "pods mount the node certificates": any(
                        (v.get("secret") or {}).get("secretName") == "demo-node-tls"
                        for v in (((get(k, STATEFULSETS, "demo") or {}).get("spec", {}).get("template", {})
                                   .get("spec", {}).get("volumes")) or [])),
                    "status written": bool(fc.get("status", {}).get("conditions")),
                    # No pods run here, so no load exists to plan from: the
                    # rebalance waits with ProposalReady=False.
                    "rebalance status written": any(
                        c.get("type") == "ProposalReady" and c.get("status") == "False"
                        for c in ((get(k, REBALANCES, "spread") or {}).get("status") or {}).get("conditions", [])),
                }
                if all(checks.values()) or proc.returncode is not None:
                    break
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
            os.unlink(config)
        for name, ok in checks.items():
            print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if all(checks.values()):
            fc = get(k, CLUSTERS, "demo")
            print("status:", json.dumps(fc.get("status"), indent=1)[:600])
            return 0
        return 1


PODS = kmock.resource("", "v1", "pods")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")


async def rolling_update(binary: str, kvnode: str) -> int:
    """Part 2 (see the module text)."""
    nodes = []
    async with kmock.KubernetesEmulator() as k, kmock.Server(k) as server:
        for resource in ["fulva.io/v1alpha1/fulvaclusters", "fulva.io/v1alpha1/fulvarebalances", "apps/v1/statefulsets",
                         "v1/services", "v1/pods", "v1/nodes", "v1/configmaps", "v1/secrets", "policy/v1/poddisruptionbudgets",
                         "coordination.k8s.io/v1/leases", "events.k8s.io/v1/events"]:
            k.resources[resource] = {}
        k.objects[CLUSTERS, "default", "demo"] = fulva_cluster(
            {"nodes": 3, "initialShards": 6, "rebalance": {"mode": "off"}})
        for i in range(3):
            ip = f"127.0.0.{21 + i}"
            k.objects[PODS, "default", f"demo-{i}"] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"demo-{i}", "namespace": "default", "uid": f"pod-{i}",
                             "labels": {"app.kubernetes.io/name": "fulva", "app.kubernetes.io/instance": "demo",
                                        "app.kubernetes.io/component": "kvnode",
                                        "controller-revision-hash": "demo-old"}},
                "spec": {"containers": [{"name": "kvnode"}]},
                "status": {"phase": "Running", "podIP": ip},
            }
        proc, config = await start_operator(binary, server)
        tls_dir = tempfile.mkdtemp(prefix="fulva-e2e-tls-")
        checks = {"kvnodes started on the node Secret": False,
                  "statefulset updateStrategy OnDelete": False, "shard map over the real nodes": False,
                  "Updating condition names the pod": False, "pod deleted only once its node owned nothing": False}
        owned_at_delete = None
        try:
            for _ in range(600):  # 60 s at most
                await asyncio.sleep(0.1)
                secret = get(k, SECRETS, "demo-node-tls")
                if not nodes and secret is not None:
                    # The pods start once the Secret they mount exists.
                    mount_secret(secret, tls_dir)
                    for i in range(3):
                        ip = f"127.0.0.{21 + i}"
                        nodes.append(await asyncio.create_subprocess_exec(
                            kvnode, f"--node-id={i}", f"--data-addr={ip}:7100", f"--control-addr={ip}:7101",
                            f"--transfer-addr={ip}:7102", f"--metrics-addr={ip}:9100", f"--tls-dir={tls_dir}",
                            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
                    checks["kvnodes started on the node Secret"] = True
                sts = get(k, STATEFULSETS, "demo")
                if sts is not None:
                    checks["statefulset updateStrategy OnDelete"] = \
                        sts.get("spec", {}).get("updateStrategy", {}).get("type") == "OnDelete"
                    if sts.get("status", {}).get("updateRevision") != "demo-new":
                        # What the StatefulSet controller would report after a template change.
                        sts.setdefault("status", {})["updateRevision"] = "demo-new"
                        k.objects[STATEFULSETS, "default", "demo"] = sts
                cm = get(k, CONFIGMAPS, "demo-shard-map")
                owners = None
                if cm is not None:
                    shard_map = json.loads(next(iter(cm.get("data", {}).values()), "{}") or "{}")
                    owners = [s.get("owner", 0) for s in shard_map.get("shards", [])]
                    checks["shard map over the real nodes"] = len(owners) >= 6 and 2 in owners or checks["shard map over the real nodes"]
                conditions = (get(k, CLUSTERS, "demo") or {}).get("status", {}).get("conditions", [])
                if any(c.get("type") == "Updating" and c.get("status") == "True" and "demo-2" in c.get("message", "")
                       for c in conditions):
                    checks["Updating condition names the pod"] = True
                if get(k, PODS, "demo-2") is None and owned_at_delete is None:
                    owned_at_delete = owners
                    checks["pod deleted only once its node owned nothing"] = owners is not None and 2 not in owners
                if all(checks.values()) or proc.returncode is not None:
                    break
        finally:
            # The kvnodes still hold ranges: SIGTERM would have them wait for a
            # drain; these are killed.
            for p, stop in [(proc, proc.terminate), *[(n, n.kill) for n in nodes]]:
                if p.returncode is None:
                    stop()
                    await p.wait()
            os.unlink(config)
            shutil.rmtree(tls_dir, ignore_errors=True)
        for name, ok in checks.items():
            print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not all(checks.values()):
            fc = get(k, CLUSTERS, "demo") or {}
            print("status:", json.dumps(fc.get("status"), indent=1)[:2000])
            print("owners when the pod went:", owned_at_delete)
            return 1
        return 0


if __name__ == "__main__":
    code = asyncio.run(main(sys.argv[1]))
    if code == 0 and len(sys.argv) > 2:
        code = asyncio.run(rolling_update(sys.argv[1], sys.argv[2]))
    sys.exit(code)
