"""A real Prometheus scrapes a local Fulva cluster (`fulva up`: three nodes,
a hot-spot workload, the rebalancer moving ranges) and every Grafana panel
query and every alert expression in deploy/ evaluates without error and
returns data; `promtool check rules` passes.

Needs the Debian `prometheus` package (prometheus and promtool) and a built
`fulva` (FULVA_BIN, else `fulva` in cargo's target directory, which
honours CARGO_TARGET_DIR and .cargo/config; built there when missing).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/fulva-rules.yaml"
DASHBOARDS = sorted((ROOT / "deploy/grafana").glob("*.json"))
# Grafana's interval variables, at a 1 s scrape interval.
GRAFANA_VARS = {"$__rate_interval": "5s", "$__interval": "1s", "$__range": "2m"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cargo_target_dir() -> Path:
    """Where cargo puts what it builds, as `cargo metadata` says."""
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(json.loads(out)["target_directory"])


def fulva_binary() -> str:
    if os.environ.get("FULVA_BIN"):
        return os.environ["FULVA_BIN"]
    path = cargo_target_dir() / "debug" / "fulva"
    if not path.exists():
        subprocess.run(["cargo", "build", "-q", "-p", "fulva-cli"], cwd=ROOT, check=True)
    return str(path)


def query_range(prom: str, expr: str, seconds: int = 90) -> dict:
    end = time.time()
    params = urllib.parse.urlencode({"query": expr, "start": end - seconds, "end": end, "step": "1s"})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{params}", timeout=10) as r:
        return json.load(r)


def panel_queries():
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                yield f"{path.stem}: {panel['title']} [{target['refId']}]", expr


def alert_signals(rules: list) -> list:
    """The signals an alert compares: `A > B and C == 0` gives A, B and C."""
    signals = []
    for rule in rules:
        for part in re.split(r"\band\b", rule["query"]):
            for side in re.split(r"\s(?:>|<|==|!=|>=|<=)\s", part):
                side = side.strip()
                if side and not re.fullmatch(r"[0-9.]+", side):
                    signals.append((rule["name"], side))
    return signals


@pytest.fixture(scope="module")
def prometheus():
    assert shutil.which("prometheus"), "apt-get install prometheus (scripts/test does)"
    tmp = Path(tempfile.mkdtemp(prefix="fulva-prom-"))
    operator_port = free_port()
    policy = tmp / "policy.yaml"
    # Slow moves (10 kB/s), so scrapes catch them in flight.
    policy.write_text("triggers: {sustainedSeconds: 1, minOpsPerSec: 500}\ncooldownSeconds: 5\n"
                      "sampleIntervalMs: 500\nbandwidthLimitMbPerSec: 0.01\n")
    up = subprocess.Popen(
        [fulva_binary(), "up", "--keys", "20000", "--clients", "8", "--duration", "75",
         "--control-addr", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp / "data"),
         "--operator-metrics-addr", f"127.0.0.1:{operator_port}", "--policy", str(policy)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    nodes = []
    deadline = time.time() + 60
    for line in up.stderr:
        found = re.search(r"metrics http://([0-9.:]+)/metrics", line)
        if found:
            nodes.append(found.group(1))
        if "running ycsb" in line:
            break
        assert time.time() < deadline, "fulva up did not start"
    assert len(nodes) == 3, nodes
    # Keep draining its output so it never blocks on a full pipe.
    drain = subprocess.Popen(["cat"], stdin=up.stderr, stdout=subprocess.DEVNULL)

    prom_port = free_port()
    (tmp / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "fulva-kvnode", "static_configs": [{"targets": nodes}]},
            {"job_name": "fulva-operator", "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}]},
        ],
    }))
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{prom_port}"
    try:
        # Let the hot spot trigger moves and the scrapes cover them.
        time.sleep(35)
        yield url
    finally:
        for proc in (prom, up, drain):
            if proc.poll() is None:
                proc.terminate()
        for proc in (prom, up, drain):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_promtool_accepts_the_rules():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_dashboard_panel_returns_data(prometheus):
    queries = list(panel_queries())
    assert len(queries) >= 18
    empty = []
    for name, expr in queries:
        result = query_range(prometheus, expr)
        assert result["status"] == "success", f"{name}: {result}"
        if not result["data"]["result"]:
            empty.append(f"{name}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_every_alert_evaluates_and_its_signals_return_data(prometheus):
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10) as r:
        groups = json.load(r)["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in rules} >= {"FulvaMoveStuck", "FulvaNodeDown", "FulvaImbalanceAbovePolicy",
                                          "FulvaErrorReplies", "FulvaOperatorReconcileErrors"}
    for rule in rules:
        assert rule["health"] == "ok", rule
    empty = []
    for name, signal in alert_signals(rules):
        result = query_range(prometheus, signal)
        assert result["status"] == "success", f"{name}: {signal}: {result}"
        if not result["data"]["result"]:
            empty.append(f"{name}: {signal}")
    assert not empty, "alert signals without data:\n" + "\n".join(empty)
