"""End-to-end run of the real `fulva-operator` binary against kmock's
KubernetesEmulator (an in-memory Kubernetes API over HTTP on loopback).

A FulvaCluster is stored in the emulator; the operator must take the leader
Lease, add its finalizer, create the StatefulSet and the Services, and write
status. Exit code 0 when all of that happened, 1 with the reason otherwise.

    python3 tests/e2e/kmock_operator.py target/debug/fulva-operator
"""

import asyncio
import json
import os
import socket
import sys
import tempfile

import kmock

CLUSTERS = kmock.resource("fulva.io", "v1alpha1", "fulvaclusters")
REBALANCES = kmock.resource("fulva.io", "v1alpha1", "fulvarebalances")
STATEFULSETS = kmock.resource("apps", "v1", "statefulsets")
SERVICES = kmock.resource("", "v1", "services")
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")


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


def get(k, resource, name, namespace="default"):
    for (res, ns, n), obj in list(k.objects.items()):
        if res == resource and ns == namespace and n == name and not obj.deleted:
            return obj.raw
    return None


async def main(binary: str) -> int:
    async with kmock.KubernetesEmulator() as k, kmock.Server(k) as server:
        # kmock serves only the resources declared to it.
        for resource in ["fulva.io/v1alpha1/fulvaclusters", "fulva.io/v1alpha1/fulvarebalances", "apps/v1/statefulsets", "v1/services", "v1/pods",
                         "v1/configmaps", "coordination.k8s.io/v1/leases", "events.k8s.io/v1/events"]:
            k.resources[resource] = {}
        k.objects[CLUSTERS, "default", "demo"] = {
            "apiVersion": "fulva.io/v1alpha1", "kind": "FulvaCluster",
            # kmock applies a JSON-patch `test` strictly (a missing member is not
            # null), which the finalizer's first add relies on; with a finalizer
            # already there, the add takes the other path.
            "metadata": {"name": "demo", "namespace": "default", "uid": "e2e-uid", "generation": 1,
                         "resourceVersion": "1", "finalizers": ["e2e.example/keep"]},
            "spec": {"nodes": 3, "initialShards": 6},
        }
        k.objects[REBALANCES, "default", "spread"] = {
            "apiVersion": "fulva.io/v1alpha1", "kind": "FulvaRebalance",
            "metadata": {"name": "spread", "namespace": "default", "uid": "e2e-rb", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"cluster": "demo", "goal": "full"},
        }
        with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as f:
            f.write(kubeconfig(str(server.url).rstrip("/")))
        env = dict(os.environ, KUBECONFIG=f.name, POD_NAMESPACE="default", POD_NAME="e2e-operator",
                   RUST_LOG=os.environ.get("RUST_LOG", "info"),
                   FULVA_OPERATOR_HTTP_ADDR=f"127.0.0.1:{free_port()}",
                   FULVA_OPERATOR_CONTROL_ADDR=f"127.0.0.1:{free_port()}")
        proc = await asyncio.create_subprocess_exec(binary, env=env)
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
            os.unlink(f.name)
        for name, ok in checks.items():
            print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if all(checks.values()):
            fc = get(k, CLUSTERS, "demo")
            print("status:", json.dumps(fc.get("status"), indent=1)[:600])
            return 0
        return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
