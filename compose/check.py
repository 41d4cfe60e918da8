#!/usr/bin/env python3
"""Static check of the docker compose deployment, for CI machines without a Docker engine.

    python3 compose/check.py [COMPOSE_FILE]     (default: docker-compose.yml next to this script)

`docker compose config` needs a Docker installation, so this script parses the YAML itself
(Python 3.11, stdlib + PyYAML) and checks what the deployment relies on:
  - every expected service exists and has an `image` or a `build`;
  - every `depends_on` target exists (no cycles), and a `service_healthy` target has a healthcheck;
  - the docledger service is built from the repository and sets every DOCLEDGER_* variable of the
    configuration contract (docs/configuration.md); its store URLs point at services it waits for;
  - every named volume a service mounts is declared under the top-level `volumes:`;
  - every Dockerfile a `build:` names exists and has FROM lines; docledger's has its ENTRYPOINT;
  - no duplicate YAML keys (PyYAML keeps the last one silently, compose refuses the file) and no
    obsolete top-level `version:`;
  - every image is pinned to a tag other than `latest`; every service but docledger publishes its
    ports on 127.0.0.1 only;
  - every bind-mounted file or directory exists;
  - monitoring: prometheus' config (the file its --config.file comes from) parses and scrapes
    docledger:<port of DOCLEDGER_LISTEN>/metrics; grafana lets anonymous users only view, takes its
    admin password from the environment with a default, provisions a Prometheus datasource at a
    service it depends on, and its dashboard provider loads grafana/dashboards/docledger.json;
  - every PromQL expression of the provisioned dashboards only uses metric names and labels that
    src/metrics.rs and src/api/scrape.rs export (names: their "docledger_..." string literals with the suffixes the
    encoder adds; labels: the fields of its label-set structs and the keys of its label
    vectors), and every panel's datasource uid is a provisioned one.
Exit status: 0 = ok (one summary line on stdout), 1 = problems (one line each on stderr),
2 = cannot check (PyYAML missing, compose file or the metric sources unreadable, bad arguments).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

try:
    import yaml
except ImportError:
    sys.stderr.write(
        "compose check: the Python module 'yaml' (PyYAML) is missing; install it with\n"
        "    python3 -m pip install pyyaml\n"
    )
    sys.exit(2)

APP = "docledger"
PROMETHEUS = "prometheus"
GRAFANA = "grafana"
REQUIRED_SERVICES = (
    "postgres",
    "mysql",
    "minio",
    "milvus-etcd",
    "milvus-minio",
    "milvus",
    APP,
    PROMETHEUS,
    GRAFANA,
)

# Where docledger's metric names come from (relative to this script, not to the compose file):
# the instruments measured as things happen, and the figures read when scraped.
SRC = Path(__file__).resolve().parent.parent / "src"
METRICS_RS = (SRC / "metrics.rs", SRC / "api" / "scrape.rs")
# The dashboard the grafana provider must load, relative to the compose file's directory.
REQUIRED_DASHBOARD = Path("grafana") / "dashboards" / "docledger.json"
PROMETHEUS_DEFAULT_CONFIG = "/etc/prometheus/prometheus.yml"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}

# The configuration contract: every variable must be set on the docledger service.
CONTRACT_VARS = (
    "DOCLEDGER_LISTEN",
    "DOCLEDGER_EVENTSTORE_URL",
    "DOCLEDGER_MYSQL_URL",
    "DOCLEDGER_MILVUS_URL",
    "DOCLEDGER_MILVUS_COLLECTION",
    "DOCLEDGER_S3_ENDPOINT",
    "DOCLEDGER_S3_BUCKET",
    "DOCLEDGER_S3_ACCESS_KEY",
    "DOCLEDGER_S3_SECRET_KEY",
    "DOCLEDGER_S3_REGION",
    "DOCLEDGER_VECTOR_DIM",
    "DOCLEDGER_API_TOKENS",
    "DOCLEDGER_MAX_BODY_BYTES",
    "DOCLEDGER_MAX_BLOB_BYTES",
)
# Variables holding a store URL: the host must be a compose service that docledger depends on.
URL_VARS = (
    "DOCLEDGER_EVENTSTORE_URL",
    "DOCLEDGER_MYSQL_URL",
    "DOCLEDGER_MILVUS_URL",
    "DOCLEDGER_S3_ENDPOINT",
)
DEPENDS_ON_CONDITIONS = {
    "service_started",
    "service_healthy",
    "service_completed_successfully",
}


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys, as compose does (merge keys `<<` allowed)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable key: let the base class report it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)


def environment_of(service: dict) -> dict[str, object]:
    """The service's `environment` as a dict; a list entry without '=' maps to None."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): v for k, v in env.items()}
    out: dict[str, object] = {}
    if isinstance(env, list):
        for item in env:
            key, sep, value = str(item).partition("=")
            out[key] = value if sep else None
    return out


def depends_on_of(service: dict) -> dict[str, str]:
    """`depends_on` (short list or long mapping form) as {target: condition}."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {str(name): "service_started" for name in deps}
    if isinstance(deps, dict):
        return {
            str(name): spec.get("condition", "service_started")
            if isinstance(spec, dict)
            else "service_started"
            for name, spec in deps.items()
        }
    return {}


def named_volumes_of(service: dict) -> list[str]:
    """Named volumes the service mounts (bind mounts and anonymous volumes are skipped)."""
    names = []
    for mount in service.get("volumes") or []:
        if isinstance(mount, str):
            source, sep, _ = mount.partition(":")
            if sep and source and not source.startswith((".", "/", "~", "$")):
                names.append(source)
        elif (
            isinstance(mount, dict)
            and mount.get("type", "volume") == "volume"
            and mount.get("source")
        ):
            names.append(str(mount["source"]))
    return names


def bind_mounts_of(service: dict, compose_dir: Path) -> list[tuple[Path, str]]:
    """(host path, container path) of the service's bind mounts; relative host paths are resolved
    against the compose file's directory, as compose does. Sources with ${...} are skipped."""
    mounts = []
    for mount in service.get("volumes") or []:
        if isinstance(mount, str):
            parts = mount.split(":")
            if len(parts) < 2 or not parts[0].startswith((".", "/", "~")):
                continue
            source, target = parts[0], parts[1]
        elif isinstance(mount, dict) and mount.get("type") == "bind":
            source, target = str(mount.get("source", "")), str(mount.get("target", ""))
        else:
            continue
        if "$" in source or not source:
            continue
        mounts.append(((compose_dir / Path(source).expanduser()).resolve(), target))
    return mounts


def host_path(service: dict, compose_dir: Path, container_path: str) -> Path | None:
    """The host path behind a path inside the container (longest bind-mount prefix), or None."""
    wanted = PurePosixPath(container_path)
    best: tuple[int, Path] | None = None
    for source, target in bind_mounts_of(service, compose_dir):
        target_path = PurePosixPath(target)
        if wanted == target_path or target_path in wanted.parents:
            depth = len(target_path.parts)
            if best is None or depth > best[0]:
                best = (depth, source.joinpath(*wanted.relative_to(target_path).parts))
    return best[1] if best else None


def image_is_pinned(image: str) -> bool:
    """True when the image reference carries a digest or a tag other than 'latest'."""
    if "@" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    _, sep, tag = last.partition(":")
    return bool(sep and tag and tag != "latest")


def port_is_loopback(port: object) -> bool:
    """True when a `ports:` entry binds the host side to 127.0.0.1 (an unpublished port is fine)."""
    if isinstance(port, dict):
        return "published" not in port or port.get("host_ip") == "127.0.0.1"
    return str(port).startswith("127.0.0.1:")


def load_yaml_file(path: Path, what: str) -> tuple[object, list[str]]:
    """Parsed YAML of a config file, or (None, [problem])."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader), []
    except OSError as err:
        return None, [f"{what}: cannot read {path}: {err.strerror}"]
    except yaml.YAMLError as err:
        return None, [
            f"{what}: {path.name} is not valid YAML: " + " ".join(str(err).split())
        ]


DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
DURATION_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 31536000,
}


def duration_seconds(text: object) -> float | None:
    """A Prometheus duration ('5s', '1m30s') in seconds, or None when it is not one."""
    text = str(text)
    parts = DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(int(n) * DURATION_SECONDS[u] for n, u in parts)


def has_healthcheck(service: dict) -> bool:
    check = service.get("healthcheck")
    if not isinstance(check, dict) or check.get("disable"):
        return False
    test = check.get("test")
    return bool(test) and test not in (["NONE"], "NONE")


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, args = line.partition(" ")
        instructions.append((word.upper(), args.strip()))
    if pending.strip():
        word, _, args = pending.strip().partition(" ")
        instructions.append((word.upper(), args.strip()))
    return instructions


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """A depends_on cycle as a list of service names, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt in graph and state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in graph:
        if state.get(start) is None:
            found = visit(start)
            if found:
                return found
    return None


def check(compose_path: Path) -> tuple[list[str], str]:
    """Returns (problems, summary line)."""
    problems: list[str] = []
    try:
        doc = yaml.load(
            compose_path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader
        )
    except OSError as err:
        raise SystemExit(f"compose check: cannot read {compose_path}: {err}") from err
    except (
        yaml.YAMLError
    ) as err:  # includes duplicate keys: compose would refuse the file too
        return [
            f"{compose_path.name} is not valid compose YAML: "
            + " ".join(str(err).split())
        ], ""
    if not isinstance(doc, dict):
        return [f"{compose_path.name}: top level must be a mapping"], ""
    if "version" in doc:
        problems.append(
            "top-level 'version' is obsolete in the compose spec; remove it"
        )

    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        return problems + ["no 'services' mapping"], ""
    for name, svc in services.items():
        if not isinstance(svc, dict):
            problems.append(f"service {name}: must be a mapping")
    services = {name: svc for name, svc in services.items() if isinstance(svc, dict)}

    for name in REQUIRED_SERVICES:
        if name not in services:
            problems.append(f"service {name}: missing")

    declared_volumes = doc.get("volumes") or {}
    if not isinstance(declared_volumes, dict):
        problems.append("top-level 'volumes' must be a mapping")
        declared_volumes = {}

    compose_dir = compose_path.resolve().parent
    graph: dict[str, dict[str, str]] = {}
    for name, svc in services.items():
        if not svc.get("image") and not svc.get("build"):
            problems.append(f"service {name}: has neither 'image' nor 'build'")
        build = svc.get("build")
        if build:
            problems += check_build(name, build, compose_dir)

        deps = depends_on_of(svc)
        graph[name] = deps
        for target, condition in deps.items():
            if target not in services:
                problems.append(
                    f"service {name}: depends_on unknown service '{target}'"
                )
                continue
            if condition not in DEPENDS_ON_CONDITIONS:
                problems.append(
                    f"service {name}: depends_on {target} has unknown condition '{condition}'"
                )
            if condition == "service_healthy" and not has_healthcheck(services[target]):
                problems.append(
                    f"service {name}: waits for {target} to be healthy, but {target} has no healthcheck"
                )

        for volume in named_volumes_of(svc):
            if volume not in declared_volumes:
                problems.append(
                    f"service {name}: volume '{volume}' is not declared under top-level 'volumes'"
                )
        for source, _target in bind_mounts_of(svc, compose_dir):
            if not source.exists():
                problems.append(f"service {name}: bind-mounted {source} does not exist")

        image = svc.get("image")
        if isinstance(image, str) and not build and not image_is_pinned(image):
            problems.append(
                f"service {name}: image '{image}' is not pinned to a tag (other than 'latest')"
            )
        if name != APP:
            for port in svc.get("ports") or []:
                if not port_is_loopback(port):
                    problems.append(
                        f"service {name}: port {port!r} is not published on 127.0.0.1 only"
                    )

    cycle = find_cycle(graph)
    if cycle:
        problems.append("depends_on cycle: " + " -> ".join(cycle))

    num_app_vars = 0
    app = services.get(APP)
    if app is not None:
        problems += check_app(app, services, compose_dir)
        num_app_vars = sum(
            1 for key in environment_of(app) if key.startswith("DOCLEDGER_")
        )

    facts: list[str] = []
    if PROMETHEUS in services:
        found, fact = check_prometheus(services, compose_dir)
        problems += found
        facts += [fact] if fact else []
    if GRAFANA in services:
        found, fact = check_grafana(services, compose_dir)
        problems += found
        facts += [fact] if fact else []

    summary = (
        f"compose ok: {len(services)} services, {num_app_vars} DOCLEDGER_* variables"
    )
    if facts:
        summary += "; " + "; ".join(facts)
    return problems, summary


def build_paths(build: object, compose_dir: Path) -> tuple[Path, Path]:
    """(context dir, Dockerfile path) of a `build:` entry, resolved like compose does."""
    if isinstance(build, dict):
        context = str(build.get("context", "."))
        dockerfile = str(build.get("dockerfile", "Dockerfile"))
    else:
        context, dockerfile = str(build), "Dockerfile"
    context_dir = (compose_dir / context).resolve()
    return context_dir, (context_dir / dockerfile).resolve()


def check_build(name: str, build: object, compose_dir: Path) -> list[str]:
    problems = []
    if isinstance(build, dict) and "dockerfile_inline" in build:
        return problems
    context_dir, dockerfile = build_paths(build, compose_dir)
    if not context_dir.is_dir():
        return [f"service {name}: build context {context_dir} is not a directory"]
    if not dockerfile.is_file():
        return [f"service {name}: Dockerfile {dockerfile} does not exist"]
    instructions = dockerfile_instructions(dockerfile.read_text(encoding="utf-8"))
    if not any(word == "FROM" for word, _ in instructions):
        problems.append(f"service {name}: {dockerfile.name} has no FROM line")
    return problems


def check_app(app: dict, services: dict, compose_dir: Path) -> list[str]:
    """docledger-specific checks: built from the repository, contract env, wiring, ENTRYPOINT."""
    problems = []
    env = environment_of(app)
    for var in CONTRACT_VARS:
        if var not in env:
            problems.append(f"service {APP}: environment variable {var} is not set")
        elif env[var] is None:
            problems.append(f"service {APP}: environment variable {var} has no value")

    deps = depends_on_of(app)
    for var in URL_VARS:
        value = env.get(var)
        if not isinstance(value, str) or "${" in value:
            continue
        host = urlsplit(value).hostname
        if host not in services:
            problems.append(
                f"service {APP}: {var} points at host '{host}', which is not a compose service"
            )
        elif host not in deps:
            problems.append(
                f"service {APP}: {var} uses service '{host}' but {APP} does not depend_on it"
            )

    build = app.get("build")
    if not build:
        problems.append(
            f"service {APP}: must be built from the repository ('build:' missing)"
        )
        return problems
    _, dockerfile = build_paths(build, compose_dir)
    if dockerfile.is_file():
        instructions = dockerfile_instructions(dockerfile.read_text(encoding="utf-8"))
        entrypoints = [args for word, args in instructions if word == "ENTRYPOINT"]
        if not entrypoints:
            problems.append(f"service {APP}: {dockerfile.name} has no ENTRYPOINT")
        elif APP not in entrypoints[-1]:
            problems.append(
                f"service {APP}: {dockerfile.name} ENTRYPOINT {entrypoints[-1]} does not run {APP}"
            )
    return problems


# ------------------------------------------------------------------------------------ monitoring


def check_prometheus(services: dict, compose_dir: Path) -> tuple[list[str], str]:
    """Prometheus' config is mounted, parses, and scrapes docledger's /metrics."""
    name = PROMETHEUS
    svc = services[name]
    config = PROMETHEUS_DEFAULT_CONFIG
    command = svc.get("command") or []
    for arg in command.split() if isinstance(command, str) else command:
        if str(arg).startswith("--config.file="):
            config = str(arg).partition("=")[2]
    source = host_path(svc, compose_dir, config)
    if source is None:
        return [
            f"service {name}: its config {config} is not bind-mounted from compose/"
        ], ""
    if not source.is_file():
        # A missing mount source is already reported with the service's bind mounts.
        return (
            [f"service {name}: config {source} is not a file"]
            if source.exists()
            else []
        ), ""
    doc, problems = load_yaml_file(source, f"service {name}")
    if problems:
        return problems, ""
    if not isinstance(doc, dict):
        return [f"service {name}: {source.name}: top level must be a mapping"], ""

    listen = environment_of(services.get(APP, {})).get("DOCLEDGER_LISTEN")
    port = str(listen).rpartition(":")[2] if isinstance(listen, str) else "8080"
    wanted = f"{APP}:{port}"
    glob = doc.get("global") or {}
    jobs = doc.get("scrape_configs") or []
    if not isinstance(jobs, list):
        return [f"service {name}: {source.name}: scrape_configs must be a list"], ""
    for job in jobs:
        if not isinstance(job, dict):
            problems.append(
                f"service {name}: {source.name}: a scrape_configs entry is not a mapping"
            )
            continue
        job_name = job.get("job_name", "?")
        interval_text = job.get("scrape_interval", glob.get("scrape_interval", "1m"))
        timeout_text = job.get("scrape_timeout", glob.get("scrape_timeout", "10s"))
        interval, timeout = (
            duration_seconds(interval_text),
            duration_seconds(timeout_text),
        )
        if interval is None or timeout is None:
            problems.append(
                f"service {name}: job {job_name}: bad duration in scrape_interval/scrape_timeout"
            )
            continue
        if "scrape_timeout" in job and timeout > interval:
            problems.append(
                f"service {name}: job {job_name}: scrape_timeout {timeout_text} exceeds "
                f"scrape_interval {interval_text} (Prometheus refuses the config)"
            )
        targets = [
            str(t)
            for sc in job.get("static_configs") or []
            if isinstance(sc, dict)
            for t in sc.get("targets") or []
        ]
        if wanted in targets:
            path = job.get("metrics_path", "/metrics")
            if path != "/metrics":
                problems.append(
                    f"service {name}: job {job_name} scrapes {wanted}{path}, not /metrics"
                )
                continue
            if APP not in depends_on_of(svc):
                problems.append(
                    f"service {name}: scrapes {APP} but does not depend_on it"
                )
            return (
                problems,
                f"prometheus scrapes {wanted}/metrics every {interval_text}",
            )
    problems.append(
        f"service {name}: {source.name} has no scrape job with target '{wanted}'"
    )
    return problems, ""


def metrics_vocabulary() -> tuple[set[str], set[str]]:
    """(metric names, label names) docledger exports, read from src/metrics.rs and
    src/api/scrape.rs."""
    texts = []
    for path in METRICS_RS:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise SystemExit(
                f"compose check: cannot read {path}: {err.strerror}"
            ) from err
    text = "\n".join(texts)
    # Counters are registered without `_total` and histograms and infos as their family
    # name: the encoder writes the series' suffixes.
    names = set()
    for name in re.findall(r'"((?:docledger|process)_[a-z_]+)"', text):
        names.update(
            name + suffix
            for suffix in ("", "_total", "_bucket", "_sum", "_count", "_info")
        )
    # Labels: the fields of the label-set structs, and the keys of the label vectors.
    labels = {"le"}
    for body in re.findall(
        r"EncodeLabelSet\)\]\s*(?:pub )?struct \w+ \{([^}]*)\}", text
    ):
        labels.update(re.findall(r"^\s*(?:pub )?([a-z_]+):", body, re.MULTILINE))
    labels.update(
        re.findall(r'\(\s*"([a-z_]+)",\s*[^)]*?\.to_(?:owned|string)\(\)', text)
    )
    if not names:
        raise SystemExit(
            "compose check: no docledger_* metric names found in "
            + ", ".join(str(p) for p in METRICS_RS)
        )
    return names, labels


PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
}
GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
)


def promql_vocabulary(expr: str) -> tuple[list[str], list[str]]:
    """(metric names, label names) an expression uses. Function names, keywords, numbers,
    durations, strings and Grafana variables ($__rate_interval, ${x}) are not metric names."""
    text = re.sub(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""", '""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)
    labels: list[str] = []
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels += re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers)
    for _, grouping in GROUPING.findall(text):
        labels += re.findall(r"[A-Za-z_]\w*", grouping)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    names = []
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        ident, call = match.group(1), match.group(2)
        if not call and ident.lower() not in PROMQL_WORDS:
            names.append(ident)
    return names, [label for label in labels if label != "__name__"]


def dashboard_panels(panels: list) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in panels or []:
        if isinstance(panel, dict):
            out.append(panel)
            out += dashboard_panels(panel.get("panels") or [])
    return out


def check_dashboard(
    path: Path, known_names: set[str], known_labels: set[str], datasource_uids: set[str]
) -> tuple[list[str], int, int, set[str]]:
    """Problems, panels, queries and metric names of one dashboard JSON."""
    where = f"dashboard {path.name}"
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        return [f"{where}: cannot read {path}: {err.strerror}"], 0, 0, set()
    except json.JSONDecodeError as err:
        return [f"{where}: not valid JSON: {err}"], 0, 0, set()
    if not isinstance(dash, dict) or not isinstance(dash.get("panels"), list):
        return [f"{where}: no 'panels' list"], 0, 0, set()
    problems = []
    for key in ("uid", "title", "schemaVersion"):
        if key not in dash:
            problems.append(f"{where}: '{key}' missing")
    labels_ok = known_labels | TARGET_LABELS
    panels = [p for p in dashboard_panels(dash["panels"]) if p.get("type") != "row"]
    ids, queries, used = set(), 0, set()
    for panel in panels:
        title = panel.get("title") or f"id {panel.get('id')}"
        if panel.get("id") in ids:
            problems.append(f"{where}: panel '{title}': duplicate id {panel.get('id')}")
        ids.add(panel.get("id"))
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{where}: panel '{title}': no queries")
        sources = [panel.get("datasource")] + [
            t.get("datasource") for t in targets if isinstance(t, dict)
        ]
        panel_uids = {
            str(s["uid"]) for s in sources if isinstance(s, dict) and s.get("uid")
        }
        for uid in sorted(panel_uids):
            # Variables and Grafana's built-in sources aside; unchecked when nothing is provisioned
            # (that is reported once, by the caller).
            if (
                datasource_uids
                and not uid.startswith(("$", "-- "))
                and uid not in datasource_uids
            ):
                problems.append(
                    f"{where}: panel '{title}': datasource uid '{uid}' is not provisioned"
                )
        for target in targets:
            if not isinstance(target, dict):
                continue
            ref = target.get("refId", "?")
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(
                    f"{where}: panel '{title}' query {ref}: no PromQL 'expr'"
                )
                continue
            queries += 1
            names, labels = promql_vocabulary(expr)
            if not names:
                problems.append(
                    f"{where}: panel '{title}' query {ref}: queries no metric: {expr}"
                )
            for metric in names:
                if metric not in known_names:
                    problems.append(
                        f"{where}: panel '{title}' query {ref}: metric '{metric}' is not "
                        "exported by src/metrics.rs or src/api/scrape.rs"
                    )
                used.add(metric)
            legend = str(target.get("legendFormat") or "")
            for label in labels + re.findall(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", legend):
                if label not in labels_ok:
                    problems.append(
                        f"{where}: panel '{title}' query {ref}: label '{label}' is not "
                        f"one docledger exports ({', '.join(sorted(labels_ok))})"
                    )
    return problems, len(panels), queries, used & known_names


def check_grafana(services: dict, compose_dir: Path) -> tuple[list[str], str]:
    """Anonymous viewers only, admin password from the environment, provisioned datasource and
    dashboards, and dashboards that only query what docledger exports."""
    name = GRAFANA
    svc = services[name]
    problems = []
    env = environment_of(svc)
    if str(env.get("GF_AUTH_ANONYMOUS_ENABLED")).lower() != "true":
        problems.append(
            f'service {name}: GF_AUTH_ANONYMOUS_ENABLED must be "true" (anonymous viewers)'
        )
    if env.get("GF_AUTH_ANONYMOUS_ORG_ROLE") != "Viewer":
        problems.append(
            f"service {name}: GF_AUTH_ANONYMOUS_ORG_ROLE must be Viewer "
            f"(is {env.get('GF_AUTH_ANONYMOUS_ORG_ROLE')!r})"
        )
    password = env.get("GF_SECURITY_ADMIN_PASSWORD")
    if not isinstance(password, str) or not re.fullmatch(r"\$\{\w+:-[^}]+\}", password):
        problems.append(
            f"service {name}: GF_SECURITY_ADMIN_PASSWORD must come from the environment "
            f"with a default, like ${{GRAFANA_ADMIN_PASSWORD:-admin}}"
        )
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if isinstance(home, str):
        source = host_path(svc, compose_dir, home)
        if source is None or not source.is_file():
            problems.append(
                f"service {name}: home dashboard {home} is not a mounted file"
            )

    # Datasources.
    uids: set[str] = set()
    ds_dir = host_path(svc, compose_dir, f"{GRAFANA_PROVISIONING}/datasources")
    ds_files = sorted(ds_dir.glob("*.y*ml")) if ds_dir and ds_dir.is_dir() else []
    if not ds_files:
        problems.append(
            f"service {name}: no datasource provisioning mounted at "
            f"{GRAFANA_PROVISIONING}/datasources"
        )
    prometheus_ds = 0
    for path in ds_files:
        doc, found = load_yaml_file(path, f"service {name}")
        problems += found
        for ds in (doc or {}).get("datasources") or [] if isinstance(doc, dict) else []:
            if not isinstance(ds, dict):
                continue
            if ds.get("uid"):
                uids.add(str(ds["uid"]))
            if ds.get("type") != "prometheus":
                continue
            prometheus_ds += 1
            url = urlsplit(str(ds.get("url", "")))
            if url.hostname not in services:
                problems.append(
                    f"service {name}: datasource '{ds.get('name')}' url {ds.get('url')} "
                    f"is not a compose service"
                )
            elif url.hostname not in depends_on_of(svc):
                problems.append(
                    f"service {name}: datasource '{ds.get('name')}' uses {url.hostname} "
                    f"but {name} does not depend_on it"
                )
    if ds_files and not prometheus_ds:
        problems.append(
            f"service {name}: no datasource of type prometheus is provisioned"
        )

    # Dashboard providers and their dashboards.
    known_names, known_labels = metrics_vocabulary()
    db_dir = host_path(svc, compose_dir, f"{GRAFANA_PROVISIONING}/dashboards")
    db_files = sorted(db_dir.glob("*.y*ml")) if db_dir and db_dir.is_dir() else []
    if not db_files:
        problems.append(
            f"service {name}: no dashboard provider mounted at {GRAFANA_PROVISIONING}/dashboards"
        )
    dashboards: list[Path] = []
    for path in db_files:
        doc, found = load_yaml_file(path, f"service {name}")
        problems += found
        for provider in (
            (doc or {}).get("providers") or [] if isinstance(doc, dict) else []
        ):
            if not isinstance(provider, dict):
                continue
            inside = str((provider.get("options") or {}).get("path", ""))
            source = host_path(svc, compose_dir, inside) if inside else None
            if source is None or not source.exists():
                problems.append(
                    f"service {name}: dashboard provider '{provider.get('name')}' path "
                    f"'{inside}' is not a mounted directory"
                )
                continue
            dashboards += (
                [source] if source.is_file() else sorted(source.rglob("*.json"))
            )
    required = (compose_dir / REQUIRED_DASHBOARD).resolve()
    if db_files and required not in dashboards:
        problems.append(f"service {name}: no dashboard provider loads {required}")

    panels = queries = 0
    used: set[str] = set()
    for path in dashboards:
        found, num_panels, num_queries, names = check_dashboard(
            path, known_names, known_labels, uids
        )
        problems += found
        panels, queries, used = panels + num_panels, queries + num_queries, used | names
    fact = (
        f"grafana: {len(dashboards)} dashboard(s), {panels} panels, {queries} queries "
        f"over {len(used)} of {len(known_names)} docledger metrics"
    )
    return problems, fact


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        sys.stderr.write(__doc__)
        return 2
    default = Path(__file__).resolve().parent / "docker-compose.yml"
    compose_path = Path(argv[1]) if len(argv) == 2 else default
    try:
        problems, summary = check(compose_path)
    except SystemExit as stop:
        sys.stderr.write(f"{stop}\n")
        return 2
    if problems:
        for problem in problems:
            sys.stderr.write(f"compose check: {problem}\n")
        sys.stderr.write(
            f"compose check FAILED: {len(problems)} problem(s) in {compose_path}\n"
        )
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
