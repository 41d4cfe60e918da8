#!/usr/bin/env python3
"""Check of the Kubernetes manifests in deploy/kubernetes, for CI (no cluster needed).

    python3 deploy/check.py               check the manifests
    python3 deploy/check.py --self-test   also show that each check fails on a broken copy

1. Every manifest is validated against the Kubernetes API schemas (PyPI kubernetes-validate,
   strict: an unknown field is an error). The ServiceMonitor is a custom resource the
   schemas do not know; its fields are checked by 2.
2. What the deployment relies on, across objects:
   - the Deployment runs at least 2 replicas, rolls with no unavailable pod, probes /readyz
     (readiness) and /healthz (liveness) on its named port, gives pods more grace than the
     drain (30 s of HTTP drain, a projector batch, the preStop delay), sets requests and a
     memory limit;
   - every DOCLEDGER_* variable set (ConfigMap or env) is a key of the configuration
     (src/config.rs), and every secret one (URLs with credentials, keys, tokens, passwords)
     comes from a Secret by reference, never as a value;
   - the Service, the PodDisruptionBudget and the ServiceMonitor select the Deployment's
     pods (the monitor through the Service's labels) and name ports that exist;
   - the migration Job runs `migrate` with the Deployment's image, its name carries that
     image's version, and it reads the log URL the same way;
   - the kustomization lists every manifest but the example Secret.
Exit status: 0 ok, 1 problems (one line each on stderr), 2 cannot check.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - CI installs it
    print("deploy/check.py: PyYAML is missing (pip install pyyaml)", file=sys.stderr)
    sys.exit(2)

HERE = Path(__file__).resolve().parent
MANIFESTS = HERE / "kubernetes"
CONFIG_RS = HERE.parent / "src" / "config.rs"
SECRET_KEYS = re.compile(r"(URL|SECRET_KEY|ACCESS_KEY|TOKENS?|PASSWORD)$")
# The drain: HTTP server shutdown timeout (30 s) and a projector batch (20 s allowed).
DRAIN_SECONDS = 30 + 20


def load(directory: Path) -> dict[str, dict]:
    """Every object of the directory's manifests, by kind (one of each kind here)."""
    objects: dict[str, dict] = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc:
                objects[doc["kind"]] = doc | {"__file__": path.name}
    return objects


def config_keys() -> set[str]:
    text = CONFIG_RS.read_text()
    table = text[text.index("const KEYS") : text.index("];", text.index("const KEYS"))]
    return {f"DOCLEDGER_{k}" for k in re.findall(r'\(\s*"([A-Z0-9_]+)"', table)} | {
        "DOCLEDGER_LOG",
        "DOCLEDGER_LOG_FORMAT",
        "DOCLEDGER_CONFIG",
    }


def schema_problems(directory: Path) -> list[str]:
    files = [
        str(p)
        for p in sorted(directory.glob("*.yaml"))
        if p.name != "kustomization.yaml"
    ]
    run = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *files],
        check=False,
        capture_output=True,
        text=True,
    )
    problems = []
    for line in (run.stdout + run.stderr).splitlines():
        if line.startswith("INFO") or "kind ServiceMonitor" in line:
            continue
        problems.append(f"schema: {line}")
    if run.returncode != 0 and not problems:
        problems.append(f"schema: kubernetes-validate exited {run.returncode}")
    return problems


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cross_problems(o: dict[str, dict], keys: set[str], listed: list[str]) -> list[str]:
    problems: list[str] = []
    dep, svc, pdb = o.get("Deployment"), o.get("Service"), o.get("PodDisruptionBudget")
    job, mon, cm = o.get("Job"), o.get("ServiceMonitor"), o.get("ConfigMap")
    for kind, obj in [
        ("Deployment", dep),
        ("Service", svc),
        ("PodDisruptionBudget", pdb),
        ("Job", job),
        ("ServiceMonitor", mon),
        ("ConfigMap", cm),
    ]:
        if obj is None:
            problems.append(f"{kind}: missing")
    if problems:
        return problems
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if spec.get("replicas", 1) < 2:
        problems.append(
            f"Deployment: {spec.get('replicas', 1)} replica(s), at least 2 wanted"
        )
    if spec.get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable") != 0:
        problems.append(
            "Deployment: a rolling update may take a pod away first (maxUnavailable)"
        )
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ports:
            problems.append(
                f"Deployment: {probe} must GET {path} on a named container port"
            )
    pre_stop = (
        container.get("lifecycle", {})
        .get("preStop", {})
        .get("sleep", {})
        .get("seconds", 0)
    )
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < DRAIN_SECONDS + pre_stop:
        problems.append(
            f"Deployment: terminationGracePeriodSeconds {grace} < drain {DRAIN_SECONDS} s"
            f" + preStop {pre_stop} s"
        )
    resources = container.get("resources", {})
    if "requests" not in resources or "memory" not in resources.get("limits", {}):
        problems.append("Deployment: requests and a memory limit wanted")
    for name, value in cm.get("data", {}).items():
        if name not in keys:
            problems.append(f"ConfigMap: {name} is not a docledger setting")
        elif SECRET_KEYS.search(name) and re.search(
            r"://[^/@]*:[^/@]*@|TOKEN|KEY", name + value
        ):
            problems.append(f"ConfigMap: {name} is a secret, take it from a Secret")
    for workload, c in [
        ("Deployment", container),
        ("Job", job["spec"]["template"]["spec"]["containers"][0]),
    ]:
        for env in c.get("env", []):
            name = env["name"]
            if name.startswith("DOCLEDGER_") and name not in keys:
                problems.append(f"{workload}: {name} is not a docledger setting")
            if SECRET_KEYS.search(name) and "secretKeyRef" not in env.get(
                "valueFrom", {}
            ):
                problems.append(
                    f"{workload}: {name} must come from a Secret by reference"
                )
        for ref in c.get("envFrom", []):
            if ref.get("configMapRef", {}).get("name") != cm["metadata"]["name"]:
                problems.append(f"{workload}: envFrom names another ConfigMap")
    if not matches(svc["spec"].get("selector", {}), pod_labels):
        problems.append("Service: its selector does not select the Deployment's pods")
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for p in svc["spec"]["ports"]:
        if p.get("targetPort") not in ports:
            problems.append(
                f"Service: targetPort {p.get('targetPort')} is no container port"
            )
    if not matches(pdb["spec"].get("selector", {}).get("matchLabels", {}), pod_labels):
        problems.append(
            "PodDisruptionBudget: its selector does not select the Deployment's pods"
        )
    if pdb["spec"].get("minAvailable", 0) < 1 or pdb["spec"][
        "minAvailable"
    ] >= spec.get("replicas", 1):
        problems.append(
            "PodDisruptionBudget: minAvailable must be at least 1 and below the replicas"
        )
    mon_spec = mon.get("spec", {})
    if not matches(
        mon_spec.get("selector", {}).get("matchLabels", {}), svc["metadata"]["labels"]
    ):
        problems.append("ServiceMonitor: its selector does not select the Service")
    for ep in mon_spec.get("endpoints", []):
        if ep.get("port") not in svc_ports or ep.get("path", "/metrics") != "/metrics":
            problems.append(
                "ServiceMonitor: endpoints must scrape /metrics on a Service port"
            )
    if not mon_spec.get("endpoints"):
        problems.append("ServiceMonitor: no endpoint")
    jc = job["spec"]["template"]["spec"]["containers"][0]
    if jc.get("image") != container.get("image") or jc.get("args") != ["migrate"]:
        problems.append("Job: must run `migrate` with the Deployment's image")
    version = container.get("image", "").rpartition(":")[2].replace(".", "-")
    if not job["metadata"]["name"].endswith(version):
        problems.append(
            f"Job: its name must end with the release ({version}): one Job per release"
        )
    files = {obj["__file__"] for obj in o.values()} - {"secret.example.yaml"}
    if sorted(files) != sorted(listed):
        problems.append(
            f"kustomization: resources {sorted(listed)} differ from {sorted(files)}"
        )
    return problems


def check(directory: Path) -> list[str]:
    objects = load(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return schema_problems(directory) + cross_problems(
        objects, config_keys(), kustomization.get("resources", [])
    )


def self_test() -> list[str]:
    """Each check must fail on a copy broken the way it guards against."""
    objects = load(MANIFESTS)
    listed = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    keys = config_keys()

    def broken(change) -> dict:
        o = copy.deepcopy(objects)
        change(o)
        return o

    def container(o):
        return o["Deployment"]["spec"]["template"]["spec"]["containers"][0]

    cases = {
        "one replica": lambda o: o["Deployment"]["spec"].__setitem__("replicas", 1),
        "short grace": lambda o: o["Deployment"]["spec"]["template"][
            "spec"
        ].__setitem__("terminationGracePeriodSeconds", 20),
        "probe path": lambda o: container(o)["readinessProbe"]["httpGet"].__setitem__(
            "path", "/"
        ),
        "typo key": lambda o: o["ConfigMap"]["data"].__setitem__(
            "DOCLEDGER_PARTITONS", "4"
        ),
        "secret as value": lambda o: container(o)["env"].append(
            {"name": "DOCLEDGER_S3_SECRET_KEY", "value": "plain"}
        ),
        "service selector": lambda o: o["Service"]["spec"]["selector"].__setitem__(
            "app.kubernetes.io/component", "other"
        ),
        "monitor port": lambda o: o["ServiceMonitor"]["spec"]["endpoints"][
            0
        ].__setitem__("port", "metrics"),
        "job image": lambda o: o["Job"]["spec"]["template"]["spec"]["containers"][
            0
        ].__setitem__("image", "docledger:9.9.9"),
    }
    failures = []
    for name, change in cases.items():
        if not cross_problems(broken(change), keys, listed):
            failures.append(f"self-test: '{name}' was not caught")
    with tempfile.TemporaryDirectory() as tmp:
        dep = copy.deepcopy(objects["Deployment"])
        dep.pop("__file__")
        dep["spec"]["replicas"] = "two"
        dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"][
            "paht"
        ] = "/"
        (Path(tmp) / "deployment.yaml").write_text(yaml.safe_dump(dep))
        if not schema_problems(Path(tmp)):
            failures.append("self-test: the schema check took a malformed Deployment")
    return failures


def main() -> int:
    args = sys.argv[1:]
    if args not in ([], ["--self-test"]):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        problems = check(MANIFESTS)
        if args == ["--self-test"]:
            problems += self_test()
    except FileNotFoundError as e:
        print(f"deploy/check.py: cannot check: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(
        f"deploy/kubernetes: {len(list(MANIFESTS.glob('*.yaml')))} manifests valid and consistent"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
