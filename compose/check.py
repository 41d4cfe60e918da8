#!/usr/bin/env python3
"""Static check of the docker compose deployment, for CI machines without a Docker engine.

    python3 compose/check.py [COMPOSE_FILE]     (default: docker-compose.yml next to this script)

`docker compose config` needs a Docker installation, so this script parses the YAML itself
(Python 3.11, stdlib + PyYAML) and checks what the deployment relies on:
  - every expected service exists and has an `image` or a `build`;
  - every `depends_on` target exists (no cycles), and a `service_healthy` target has a healthcheck;
  - the docledger service is built from the repository and sets every DOCLEDGER_* variable of the
    configuration contract (DESIGN.md); its store URLs point at services it waits for;
  - every named volume a service mounts is declared under the top-level `volumes:`;
  - every Dockerfile a `build:` names exists and has FROM lines; docledger's has its ENTRYPOINT;
  - no duplicate YAML keys (PyYAML keeps the last one silently, compose refuses the file) and no
    obsolete top-level `version:`.
Exit status: 0 = ok (one summary line on stdout), 1 = problems (one line each on stderr),
2 = cannot check (PyYAML missing, file unreadable, bad arguments).
"""

from __future__ import annotations

import sys
from pathlib import Path
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
REQUIRED_SERVICES = ("postgres", "mysql", "minio", "milvus-etcd", "milvus-minio", "milvus", APP)

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
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


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
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
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
            str(name): spec.get("condition", "service_started") if isinstance(spec, dict)
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
        elif isinstance(mount, dict):
            if mount.get("type", "volume") == "volume" and mount.get("source"):
                names.append(str(mount["source"]))
    return names


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
                return path[path.index(nxt):] + [nxt]
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
        doc = yaml.load(compose_path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except OSError as err:
        raise SystemExit(f"compose check: cannot read {compose_path}: {err}") from err
    except yaml.YAMLError as err:  # includes duplicate keys: compose would refuse the file too
        return [f"{compose_path.name} is not valid compose YAML: " + " ".join(str(err).split())], ""
    if not isinstance(doc, dict):
        return [f"{compose_path.name}: top level must be a mapping"], ""
    if "version" in doc:
        problems.append("top-level 'version' is obsolete in the compose spec; remove it")

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
                problems.append(f"service {name}: depends_on unknown service '{target}'")
                continue
            if condition not in DEPENDS_ON_CONDITIONS:
                problems.append(f"service {name}: depends_on {target} has unknown condition '{condition}'")
            if condition == "service_healthy" and not has_healthcheck(services[target]):
                problems.append(
                    f"service {name}: waits for {target} to be healthy, but {target} has no healthcheck")

        for volume in named_volumes_of(svc):
            if volume not in declared_volumes:
                problems.append(f"service {name}: volume '{volume}' is not declared under top-level 'volumes'")

    cycle = find_cycle(graph)
    if cycle:
        problems.append("depends_on cycle: " + " -> ".join(cycle))

    num_app_vars = 0
    app = services.get(APP)
    if app is not None:
        problems += check_app(app, services, compose_dir)
        num_app_vars = sum(1 for key in environment_of(app) if key.startswith("DOCLEDGER_"))

    summary = f"compose ok: {len(services)} services, {num_app_vars} DOCLEDGER_* variables"
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
            problems.append(f"service {APP}: {var} points at host '{host}', which is not a compose service")
        elif host not in deps:
            problems.append(f"service {APP}: {var} uses service '{host}' but {APP} does not depend_on it")

    build = app.get("build")
    if not build:
        problems.append(f"service {APP}: must be built from the repository ('build:' missing)")
        return problems
    _, dockerfile = build_paths(build, compose_dir)
    if dockerfile.is_file():
        instructions = dockerfile_instructions(dockerfile.read_text(encoding="utf-8"))
        entrypoints = [args for word, args in instructions if word == "ENTRYPOINT"]
        if not entrypoints:
            problems.append(f"service {APP}: {dockerfile.name} has no ENTRYPOINT")
        elif APP not in entrypoints[-1]:
            problems.append(f"service {APP}: {dockerfile.name} ENTRYPOINT {entrypoints[-1]} does not run {APP}")
    return problems


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
        sys.stderr.write(f"compose check FAILED: {len(problems)} problem(s) in {compose_path}\n")
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
