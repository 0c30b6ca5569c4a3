"""The README's "Running the pieces yourself", run as written: its make commands (the
long-running ones in the background, as in their own terminals), then its curl, which must
get the answer the README shows; then its replay line. Nothing here knows more than the
README says, except where each piece says it is ready (the ports it names, its log lines)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from payment_worker.devstack.broker import port_open
from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Running the pieces yourself"
FOREGROUND = {"broker", "devserver", "run", "shim"}  # each "in a terminal of its own"
PORTS = {"broker": 9092, "devserver": 5002, "shim": 5004}


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """The block's commands, comments dropped, continuation lines joined."""
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_the_readme_names_the_pieces_in_order() -> None:
    """The README's block is the pieces in the order they depend on each other, then a curl."""
    setup, curl = readme_blocks()[:2]
    targets = [argv[1] for argv in commands(setup)]
    assert targets == ["install", "services", "broker", "devserver", "topics", "run", "shim"]
    assert commands(curl)[0][0] == "curl"


def test_following_the_readme_to_the_letter_gives_its_answers(tmp_path: Path) -> None:
    """The README's commands as written bring up a stack whose curl gets the documented 200, again
    for the same key, and whose replay answers from the ledger."""
    busy = [f"{name} :{port}" for name, port in PORTS.items() if port_open("127.0.0.1", port)]
    assert not busy, f"the README's ports are taken on this machine: {busy}"
    setup, curl = readme_blocks()[:2]
    # Everything as written; only the database schema is this test's own, so that order 0
    # is unpaid whatever ran on this machine before (and nothing of a user's is touched).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMENT_")}
    env["PAYMENT_DB_SCHEMA"] = f"readme_{uuid.uuid4().hex[:8]}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    running: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        for argv in commands(setup):
            target = argv[1]
            log = ARTIFACTS / f"readme-{target}-{uuid.uuid4().hex[:6]}.log"
            if target not in FOREGROUND:
                done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=600)
                assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
                if target == "topics":
                    assert done.stdout.decode().count(" created  ") == 5, done.stdout
                continue
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            running.append((target, process, log))
            wait_ready(target, process, log)
        answer = subprocess.run(
            ["bash", "-c", curl], capture_output=True, text=True, timeout=60, env=env
        )
        body = json.loads(answer.stdout)
        assert body["success"] is True and body["errorMessage"] is None, body
        assert body["payment"]["status"] == "succeeded"
        again = json.loads(
            subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60).stdout
        )
        assert again["payment"]["id"] == body["payment"]["id"]
        replay = subprocess.run(
            ["make", "replay", "ARGS=--from-beginning"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert replay.returncode == 0, replay.stdout[-3000:] + replay.stderr[-3000:]
        assert "answered from ledger" in replay.stdout
    finally:
        for _, process, _ in reversed(running):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process, _ in running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def wait_ready(target: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, f"make {target} exited:\n{log.read_text()[-3000:]}"
        if target == "broker" and port_open("127.0.0.1", 9092):
            return
        if target == "devserver" and _ok("http://127.0.0.1:5002/health"):
            return
        if target == "run" and "partitions_assigned" in log.read_text(errors="replace"):
            return
        if target == "shim" and _ok("http://127.0.0.1:5004/health"):
            return
        time.sleep(0.2)
    raise AssertionError(f"make {target} not ready:\n{log.read_text()[-3000:]}")


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
