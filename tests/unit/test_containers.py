"""The test suite's container mode (tests/containers.py, tests/conftest.py): how
PAYMENT_TEST_CONTAINERS is read, which containers start and with what settings (those of
docker-compose.yml), how the fixtures hand out their addresses, and the one line a run gets
when there is no Docker engine. No container starts here: this machine has no Docker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tests.conftest as conftest
from tests import containers

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("", False), ("0", False), ("false", False), ("1", True), ("true", True)],
)
def test_the_variable_turns_containers_on_and_off(value: str | None, expected: bool) -> None:
    """1/true turn containers on; unset, empty, 0 or false leave the local services."""
    environ = {} if value is None else {containers.VARIABLE: value}
    assert containers.wanted(environ) is expected


def test_a_value_that_is_neither_is_one_clear_line() -> None:
    """Any other value is refused, saying what is expected."""
    with pytest.raises(containers.ContainersUnavailable, match=r"expected 1 \(containers\) or 0"):
        containers.wanted({containers.VARIABLE: "sometimes"})


def test_the_containers_are_the_compose_files_images_and_settings() -> None:
    """Same images, same environment as docker-compose.yml; only the broker's host listener
    is advertised on the port published here (compose fixes it at 9094)."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    specs = containers.compose_specs()
    for name in ("kafka", "postgres", "redis"):
        assert specs[name].image == services[name]["image"]
    assert specs["kafka"].image.startswith("apache/kafka:")
    compose_kafka = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    ours = containers.kafka_environment(specs["kafka"], 40123)
    assert "controller" in ours["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper
    differing = {k for k in compose_kafka if compose_kafka[k] != ours[k]}
    assert differing == {"KAFKA_ADVERTISED_LISTENERS"}
    assert ours["KAFKA_ADVERTISED_LISTENERS"] == (
        "PLAINTEXT://kafka:9092,PLAINTEXT_HOST://localhost:40123"
    )
    assert specs["postgres"].environment == {
        k: str(v) for k, v in services["postgres"]["environment"].items()
    }
    assert containers.postgres_url(specs["postgres"], "localhost", 5555) == (
        "postgresql://payments:payments@localhost:5555/payments"
    )


def test_the_fixtures_hand_out_the_containers_addresses(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """With containers wanted, `infrastructure` starts them once and stops them at the end;
    `database_url`, `redis_url` and `broker` are theirs, not the local services'."""
    stopped: list[bool] = []
    fake = containers.Containers(
        bootstrap="localhost:40123",
        database_url=database_url,  # a database that answers: the fixture connects to check
        redis_url="redis://localhost:40124/0",
        stop=lambda: stopped.append(True),
    )
    monkeypatch.setattr(containers, "wanted", lambda environ=os.environ: True)
    monkeypatch.setattr(containers, "start_containers", lambda: fake)
    infrastructure = conftest.infrastructure.__wrapped__()
    assert next(infrastructure) is fake
    assert conftest.database_url.__wrapped__(fake) == fake.database_url
    assert conftest.redis_url.__wrapped__(fake) == "redis://localhost:40124/0"
    assert conftest.broker.__wrapped__(fake) == "localhost:40123"
    assert stopped == []
    with pytest.raises(StopIteration):
        next(infrastructure)
    assert stopped == [True]


def test_without_the_variable_the_local_services_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """Containers not wanted: none is started, and the fixtures give the local addresses."""
    monkeypatch.setattr(containers, "wanted", lambda environ=os.environ: False)
    monkeypatch.setattr(containers, "start_containers", lambda: pytest.fail("started"))
    assert next(conftest.infrastructure.__wrapped__()) is None
    assert conftest.redis_url.__wrapped__(None) == conftest.REDIS_URL


def test_without_a_docker_engine_the_run_stops_with_one_line(tmp_path: Path) -> None:
    """PAYMENT_TEST_CONTAINERS=1 where no Docker engine answers: pytest stops before any test
    (a usage error, exit status 4) with one line that says why and what to do."""
    env = {
        **os.environ,
        containers.VARIABLE: "1",
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/unit/test_ids.py", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 4, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ERROR: PAYMENT_TEST_CONTAINERS=1 needs a Docker engine")
    assert "unset it to run on the local services and broker" in lines[0]
