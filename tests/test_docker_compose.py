"""docker/docker-compose.yml and docker/Dockerfile, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema
(tests/data/compose-spec/), then against the project itself: dependencies, mounted
paths, settings, published ports, the image's COPY sources and the CLI commands.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest
import yaml

from ticktape import cli
from ticktape.config import Settings, run_defaults
from ticktape.metrics import ROLE_PORTS

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"
SCHEMA_FILE = Path(__file__).parent / "data" / "compose-spec" / "compose-spec.json"

# The services that run the ticktape image, and the long-running ones among them.
TICKTAPE_SERVICES = {"init", "producer", "worker", "sink-postgres", "sink-redis"}
LONG_RUNNING = TICKTAPE_SERVICES - {"init"}
SETTING_ENVS = {f.metadata["env"] for f in fields(Settings)}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is a literal $.
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _interpolate(value, env: dict[str, str]):
    """Compose's variable substitution over a parsed document (strings only)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        val = env.get(name)
        unset = val is None or (val == "" and op and op.startswith(":"))
        if op and op.endswith("?") and unset:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return val or ""

    return INTERPOLATION.sub(sub, value)


def _variables(value) -> set[tuple[str, str | None]]:
    """Every (variable, operator) the document references."""
    if isinstance(value, dict):
        return set().union(*(_variables(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_variables(v) for v in value)) if value else set()
    if not isinstance(value, str):
        return set()
    return {(m.group(1), m.group(2)) for m in INTERPOLATION.finditer(value) if m.group(1)}


def _schema_errors(doc) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_is_valid_against_the_compose_spec(compose):
    jsonschema.Draft7Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))
    assert _schema_errors(compose) == []


def test_schema_rejects_a_broken_compose_file(compose):
    # The validation above can fail: a typo'd key and a bad dependency condition are caught.
    broken = json.loads(json.dumps(compose))
    broken["services"]["kafka"]["port"] = ["9092:9092"]
    broken["services"]["producer"]["depends_on"]["kafka"]["condition"] = "healthy"
    errors = _schema_errors(broken)
    assert len(errors) == 2, errors


def test_env_example_sets_exactly_the_variables_the_compose_file_uses(compose):
    example = _env_example()
    used = _variables(compose)
    required = {name for name, op in used if op is None or op.endswith("?")}
    assert required <= set(example), f"missing in .env.example: {sorted(required - set(example))}"
    secrets = {s["environment"] for s in (compose.get("secrets") or {}).values() if "environment" in s}
    # config/run.env gives the main job's settings; .env.example leaves them to it
    assert not set(example) & set(run_defaults())
    assert set(example) | set(run_defaults()) == {name for name, _ in used} | secrets, "unused keys in .env.example"
    resolved = _interpolate(compose, run_defaults() | example)
    assert _schema_errors(resolved) == []
    # A missing credential stops `docker compose` with a message instead of an empty password.
    without_password = {k: v for k, v in example.items() if k != "POSTGRES_PASSWORD"}
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        _interpolate(compose, without_password)


def test_credentials_come_only_from_the_env_file(services):
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|AUTH", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (name, key, value)
            if key in ("DATABASE_URL", "REDIS_URL"):
                userinfo = str(value).split("://", 1)[1].rsplit("@", 1)[0]
                assert re.fullmatch(r"(\$\{[A-Z_]+:\?[^}]+\})?:\$\{[A-Z_]+:\?[^}]+\}", userinfo), value
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "docker/.env must be git-ignored"


def test_depends_on_targets_exist_and_wait_for_real_conditions(services):
    for name, svc in services.items():
        for target, dep in (svc.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name
            target_hc = services[target].get("healthcheck") or {}
            if dep["condition"] == "service_healthy":
                assert target_hc.get("test") and not target_hc.get("disable"), (
                    f"{name} waits for {target} to be healthy but {target} has no healthcheck"
                )
            if dep["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is not one-shot"
    for name in LONG_RUNNING:
        deps = services[name]["depends_on"]
        assert deps["init"]["condition"] == "service_completed_successfully", name


def test_start_order_has_no_cycle(services):
    order, pending = [], dict(services)
    while pending:
        ready = [n for n, s in pending.items() if all(d in order for d in (s.get("depends_on") or {}))]
        assert ready, f"dependency cycle among {sorted(pending)}"
        order += sorted(ready)
        for n in ready:
            del pending[n]
    assert order.index("init") < min(order.index(n) for n in LONG_RUNNING)


def test_mounted_host_paths_exist_and_named_volumes_are_declared(compose, services):
    binds = 0
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).resolve().is_relative_to(REPO), (name, source)
                assert (DOCKER / source).exists(), f"{name} mounts missing {source}"
                binds += 1
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    assert binds == 4  # prometheus/, prometheus/alertmanager.yml, grafana/provisioning, grafana/dashboards


def test_ticktape_services_share_one_image_and_use_only_real_settings(services):
    built = {n for n, s in services.items() if "build" in s}
    assert built == TICKTAPE_SERVICES
    assert {services[n]["image"] for n in built} == {"ticktape:local"}
    for name in built:
        build = services[name]["build"]
        assert (DOCKER / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE
        env = services[name]["environment"]
        assert set(env) <= SETTING_ENVS, f"{name}: not settings: {sorted(set(env) - SETTING_ENVS)}"
    dockerfile_env = set(re.findall(r"^\s*([A-Z][A-Z0-9_]*)=", DOCKERFILE.read_text(), re.M))
    assert {"TICKTAPE_HOME", "METRICS_HOST"} <= dockerfile_env
    assert {e for e in dockerfile_env if not e.startswith(("PYTHON", "PIP_"))} <= SETTING_ENVS


def test_the_ticktape_services_run_the_main_job_of_ticktape_run(services):
    # make up reads config/run.env, then docker/.env: the values `ticktape run` uses, overridable
    assert "--env-file config/run.env --env-file docker/.env" in (REPO / "Makefile").read_text()
    passed = {env for env in SETTING_ENVS if env.startswith(("STRATEGY_", "EXEC_", "TICK_BATCH_"))} | {"RISK_CONFIG"}
    for name in TICKTAPE_SERVICES:
        env = services[name]["environment"]
        assert {k: env.get(k) for k in passed} == {k: f"${{{k}:-}}" for k in passed}, name
        resolved = _interpolate(env, run_defaults() | _env_example())
        assert {k: resolved[k] for k in run_defaults()} == run_defaults(), name
        assert (
            _interpolate(env, run_defaults() | _env_example() | {"STRATEGY_INTERVAL": "1m"})["STRATEGY_INTERVAL"]
            == "1m"
        )
    assert "pip install -e '.[yahoo]'" in DOCKERFILE.read_text()


def test_make_up_checks_compose_and_the_env_file_first():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^up: compose-check$", makefile, re.M) and re.search(r"^down: compose-check$", makefile, re.M)
    check = makefile.split("compose-check:\n", 1)[1].split("\n\n", 1)[0]
    assert "docker compose version" in check and "test -f docker/.env" in check
    assert check.count("exit 1") == 2


def test_every_long_running_service_serves_metrics_on_its_role_port(services):
    for name in LONG_RUNNING:
        env = services[name]["environment"]
        assert env["METRICS_PORT"] == str(ROLE_PORTS[name]), name
        assert env["METRICS_HOST"] == "0.0.0.0", name
        assert services[name]["expose"] == [str(ROLE_PORTS[name])], name
        assert "METRICS_PORT" in " ".join(services[name]["healthcheck"]["test"])


def test_host_ports_are_published_on_loopback_only(services):
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
            published += 1
    assert published == 7  # kafka, schema-registry, timescaledb, redis, prometheus, alertmanager, grafana


def test_kafka_advertises_an_in_network_and_a_loopback_listener(services):
    env = services["kafka"]["environment"]
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["INTERNAL"] == "kafka:9092"
    assert advertised["HOST"] == "127.0.0.1:${KAFKA_HOST_PORT:-29092}"
    assert services["kafka"]["ports"] == ["127.0.0.1:${KAFKA_HOST_PORT:-29092}:29092"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in TICKTAPE_SERVICES:
        assert services[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_dockerfile_copy_sources_exist():
    copies = [shlex.split(line)[1:] for line in DOCKERFILE.read_text().splitlines() if line.startswith("COPY ")]
    assert copies
    sources = [src for args in copies for src in args[:-1] if not src.startswith("--")]
    missing = [src for src in sources if not (REPO / src).exists()]
    assert missing == []
    # The package's own folders (pyproject's packages.find) all go into the image.
    assert {"ticktape", "producers", "stream_processors", "sinks", "schemas", "kafka", "pyproject.toml"} <= set(sources)


def _argv(service: dict) -> list[list[str]]:
    """The ticktape command lines a service runs (without the program name)."""
    entrypoint = service.get("entrypoint")
    if entrypoint is None:  # the image's ENTRYPOINT ["ticktape"]
        return [list(service["command"])]
    assert entrypoint == ["sh", "-ec"]
    lines = [shlex.split(part) for part in service["command"][0].split("&&")]
    assert all(line[0] == "ticktape" for line in lines), lines
    return [line[1:] for line in lines]


def test_service_commands_are_ticktape_subcommands(services):
    assert 'ENTRYPOINT ["ticktape"]' in DOCKERFILE.read_text()
    expected = {
        "init": [["topics", "create"], ["db", "migrate"], ["models", "ensure"]],
        "producer": [["produce", "sim"]],
        "worker": [["process", "worker"]],
        "sink-postgres": [["sink", "postgres"]],
        "sink-redis": [["sink", "redis"]],
    }
    assert {name: _argv(services[name]) for name in TICKTAPE_SERVICES} == expected
    parser = cli.build_parser()
    for name, argvs in expected.items():
        for argv in argvs:
            assert argv[0] in cli.COMMANDS, f"{name}: {argv[0]} is not a ticktape command"
            # A command module that exists in this tree must accept the full argv.
            if importlib.util.find_spec(f"ticktape.commands.{argv[0]}"):
                try:
                    parser.parse_args(argv)
                except SystemExit as e:
                    pytest.fail(f"{name}: `ticktape {' '.join(argv)}` does not parse (exit {e.code})")
