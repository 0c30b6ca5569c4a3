"""The test suite on containers instead of this machine's services: with
PAYMENT_TEST_CONTAINERS=1 and a Docker engine, the session starts Apache Kafka (KRaft),
PostgreSQL and Redis with testcontainers, configured as docker-compose.yml configures them
(the same images, the same environment), and the fixtures hand out their addresses.

Without the variable (or with 0) the suite uses the local services and the local Apache Kafka
broker. With it and no Docker engine, the run stops at once with one line saying so."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
VARIABLE = "PAYMENT_TEST_CONTAINERS"
_ON, _OFF = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


class ContainersUnavailable(Exception):
    """PAYMENT_TEST_CONTAINERS is set wrong, or Docker cannot be reached: one line."""


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the run asks for containers (PAYMENT_TEST_CONTAINERS)."""
    value = environ.get(VARIABLE, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ContainersUnavailable(f"{VARIABLE}={environ[VARIABLE]!r}: expected 1 (containers) or 0")


@dataclass(frozen=True)
class Spec:
    """One container as docker-compose.yml declares it."""

    image: str
    environment: dict[str, str] = field(default_factory=dict)


def compose_specs(path: Path = COMPOSE_FILE) -> dict[str, Spec]:
    """kafka, postgres and redis as docker-compose.yml has them."""
    services = yaml.safe_load(path.read_text(encoding="utf-8"))["services"]
    return {
        name: Spec(
            services[name]["image"],
            {k: str(v) for k, v in (services[name].get("environment") or {}).items()},
        )
        for name in ("kafka", "postgres", "redis")
    }


def kafka_environment(spec: Spec, host_port: int) -> dict[str, str]:
    """The compose broker's environment, its host listener advertised on `host_port` (the
    port the container's 9094 is published on here) instead of compose's fixed 9094."""
    env = dict(spec.environment)
    env["KAFKA_ADVERTISED_LISTENERS"] = env["KAFKA_ADVERTISED_LISTENERS"].replace(
        "PLAINTEXT_HOST://localhost:9094", f"PLAINTEXT_HOST://localhost:{host_port}"
    )
    return env


def postgres_url(spec: Spec, host: str, port: int) -> str:
    env = spec.environment
    user, password, db = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
    return f"postgresql://{user}:{password}@{host}:{port}/{db}"


def docker_client() -> Any:
    """A client of the Docker engine, or ContainersUnavailable in one line."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker raises DockerException, ConnectionError, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ContainersUnavailable(
            f"{VARIABLE}=1 needs a Docker engine, and none answers ({first}); unset it to run"
            " on the local services and broker"
        ) from None
    return client


@dataclass
class Containers:
    """The three running containers and how to reach them."""

    bootstrap: str
    database_url: str
    redis_url: str
    stop: Callable[[], None]


def _wait(what: str, ready: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise ContainersUnavailable(f"the {what} container was not ready in {timeout_s:.0f}s")
        time.sleep(0.5)


def start_containers() -> Containers:
    """Kafka, PostgreSQL and Redis containers, each once it answers."""
    docker_client()
    import psycopg
    import redis
    from testcontainers.core.container import DockerContainer

    from payment_worker.adapters.kafka import broker_reachable
    from payment_worker.devstack.broker import free_port

    specs = compose_specs()
    kafka_port = free_port()
    kafka = DockerContainer(specs["kafka"].image).with_bind_ports(9094, kafka_port)
    for name, value in kafka_environment(specs["kafka"], kafka_port).items():
        kafka = kafka.with_env(name, value)
    postgres = DockerContainer(specs["postgres"].image).with_exposed_ports(5432)
    for name, value in specs["postgres"].environment.items():
        postgres = postgres.with_env(name, value)
    cache = DockerContainer(specs["redis"].image).with_exposed_ports(6379)
    started = [kafka.start(), postgres.start(), cache.start()]

    def stop() -> None:
        for container in started:
            container.stop()

    bootstrap = f"localhost:{kafka_port}"
    database_url = postgres_url(
        specs["postgres"], postgres.get_container_host_ip(), int(postgres.get_exposed_port(5432))
    )
    redis_url = f"redis://{cache.get_container_host_ip()}:{cache.get_exposed_port(6379)}/0"

    def database_up() -> bool:
        try:
            psycopg.connect(database_url, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def redis_up() -> bool:
        try:
            return bool(redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    try:
        _wait("kafka", lambda: broker_reachable({"bootstrap.servers": bootstrap}, 2.0))
        _wait("postgres", database_up)
        _wait("redis", redis_up)
    except BaseException:
        stop()
        raise
    return Containers(bootstrap, database_url, redis_url, stop)
