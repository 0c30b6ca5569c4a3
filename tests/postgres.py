"""A PostgreSQL server of one test module's own: a real cluster (initdb, pg_ctl) on a free port,
for a test that restarts its database without touching the one every other test uses (the
suite runs its service tests two at a time)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg

from payment_worker.devstack.broker import free_port


def _bindir() -> Path:
    """The server's programs: pg_config's bindir, else the newest Debian cluster's."""
    try:
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if (Path(found) / "pg_ctl").exists():
            return Path(found)
    except (OSError, subprocess.CalledProcessError):
        pass
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parts)
    if not versions:
        raise RuntimeError("no PostgreSQL server programs (pg_ctl) on this machine")
    return versions[-1].parent


class PrivatePostgres:
    """One cluster in `directory`, trusted on 127.0.0.1 for `postgres`, durable as the default
    cluster is (a restart keeps every committed row)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._bin = _bindir()

    def _run(self, *args: str) -> None:
        command = [str(self._bin / args[0]), *args[1:]]
        if os.geteuid() == 0:  # the server refuses to run as root: as the postgres user
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> PrivatePostgres:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self._pg_ctl("start")
        psycopg.connect(self.url, connect_timeout=10).close()
        return self

    def _pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "log"),
            "-w",
            "-m",
            "fast",
            action,
        )

    def restart(self) -> None:
        self._pg_ctl("restart")

    def stop(self) -> None:
        try:
            self._pg_ctl("stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
