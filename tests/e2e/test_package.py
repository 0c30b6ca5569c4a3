"""The built wheel, installed (not editable) into a fresh venv, runs from any directory.

The fresh venv gets the wheel only; its dependencies are read from this environment's
site-packages through a .pth line (which adds the directory without running its .pth files,
so this checkout's editable install stays invisible). What runs is the wheel's own
payment_worker, with the schemas and SQL files it carries.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from payment_worker.devstack.broker import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def clean_copy(destination: Path) -> Path:
    """The checkout without its build state (build/, *.egg-info, .venv), as a clone is."""
    shutil.copytree(
        ROOT,
        destination,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".devstack", "build", "dist", "*.egg-info", "__pycache__", "tests"
        ),
    )
    return destination


def build_wheel(source: Path, dist: Path) -> Path:
    """pip's wheel of `source` (a tree or an sdist), with this environment's setuptools."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            str(source),
        ],
        check=True,
        cwd=dist.parent,
    )
    (wheel,) = dist.glob("payment_worker-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(clean_copy(work / "source"), work / "dist")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        cwd=work,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def run_in(
    venv: Path, env: dict[str, str], *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "payment-worker"), *args],
        env={"PATH": os.environ["PATH"], **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_healthy(port: int, process: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"no 200 from /health on {port} within {timeout_s} s")


def test_the_wheel_carries_its_schemas_and_sql(wheel_venv: Path, tmp_path: Path) -> None:
    """The installed wheel's own package (not this checkout) holds the schemas and SQL it reads."""
    probe = subprocess.run(
        [
            str(wheel_venv / "bin" / "python"),
            "-c",
            "import payment_worker, pathlib; from payment_worker.adapters.postgres import sql_dir;"
            " from payment_worker.adapters.avro_codec import schemas_dir;"
            " print(payment_worker.__file__); print(sorted(p.name for p in sql_dir().iterdir()));"
            " print(sorted(p.name for p in schemas_dir().iterdir()))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    where, sql_files, schema_files = probe.stdout.splitlines()
    assert where.startswith(str(wheel_venv)), where
    assert "queries.sql" in sql_files and "001_initial.sql" in sql_files
    assert "process_payment.avsc" in schema_files and "payment_reply.avsc" in schema_files


def test_migrate_run_and_shim_start_from_the_wheel(
    wheel_venv: Path, tmp_path: Path, worker_env: dict[str, str], database_url: str
) -> None:
    """From the wheel, in another directory: migrate (twice), run and shim come up, answer /health
    and stop on SIGTERM."""
    schema = f"wheel_{uuid.uuid4().hex[:8]}"
    env = {**worker_env, "PAYMENT_DB_SCHEMA": schema}
    try:
        migrated = run_in(wheel_venv, env, "migrate", cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        assert f"schema {schema}: applied migrations 001" in migrated.stdout
        again = run_in(wheel_venv, env, "migrate", cwd=tmp_path)
        assert again.returncode == 0 and "up to date" in again.stdout

        for command, port_variable in (
            ("run", "PAYMENT_METRICS_PORT"),
            ("shim", "PAYMENT_SHIM_PORT"),
        ):
            port = free_port()
            process = subprocess.Popen(
                [str(wheel_venv / "bin" / "payment-worker"), command],
                env={"PATH": os.environ["PATH"], **env, port_variable: str(port)},
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                wait_healthy(port, process)
                process.send_signal(signal.SIGTERM)
                # uvicorn shuts down gracefully, then re-raises the signal it caught.
                stopped = {0} if command == "run" else {0, -signal.SIGTERM}
                assert process.wait(timeout=30) in stopped, f"{command} did not stop on SIGTERM"
            finally:
                if process.poll() is None:
                    process.kill()
                process.communicate()
    finally:
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_the_sdist_carries_schemas_and_sql_and_builds_a_wheel_that_does(tmp_path: Path) -> None:
    """`python -m build --sdist` from a clean copy, then a wheel built from that sdist alone:
    both hold the four schemas and every SQL file the package reads."""
    import tarfile
    import zipfile

    source = clean_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(dist)],
        check=True,
        cwd=source,
        capture_output=True,
    )
    (sdist,) = dist.glob("payment_worker-*.tar.gz")
    package = ROOT / "payment_worker"
    wanted = {
        str(path.relative_to(ROOT))
        for pattern in ("schemas/*.avsc", "sql/*.sql")
        for path in package.glob(pattern)
    }
    assert len([w for w in wanted if w.endswith(".avsc")]) == 4
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert wanted - in_sdist == set()
    wheel = build_wheel(sdist, dist)
    with zipfile.ZipFile(wheel) as archive:
        assert wanted - set(archive.namelist()) == set()
