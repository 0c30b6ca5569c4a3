"""The import graph points inward: the domain imports nothing of ours outside it, only the
command line imports the composition root, no adapter reaches into the pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "payment_worker"


def imports_of(path: Path) -> set[str]:
    """Every `payment_worker...` module a file imports, at any depth (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "payment_worker"}


def modules(folder: str = "") -> dict[str, set[str]]:
    root = PACKAGE / folder if folder else PACKAGE
    return {str(path.relative_to(PACKAGE)): imports_of(path) for path in root.rglob("*.py")}


def test_the_domain_imports_only_the_domain() -> None:
    """No module of domain/ imports one of ours outside domain/."""
    outside = {
        module: sorted(i for i in found if not i.startswith("payment_worker.domain"))
        for module, found in modules("domain").items()
    }
    assert {m: i for m, i in outside.items() if i} == {}


def test_only_the_command_line_imports_the_composition_root() -> None:
    """bootstrap is imported by __main__ alone: everything else gets what it needs passed in."""
    importers = {m for m, found in modules().items() if "payment_worker.bootstrap" in found}
    assert importers == {"__main__.py"}


def test_no_adapter_imports_the_pipeline() -> None:
    """Adapters implement ports; none reaches into service.pipeline."""
    reaching = {
        m for m, found in modules("adapters").items() if any("service.pipeline" in i for i in found)
    }
    assert reaching == set()


# The client classes bootstrap builds; entry points get them (or factories of them) passed in.
CLIENTS = {
    "payment_worker.adapters.kafka.ThreadedConsumer",
    "payment_worker.adapters.kafka.OutboxProducer",
    "payment_worker.adapters.kafka.DirectProducer",
    "payment_worker.adapters.kafka.CommandProducer",
    "payment_worker.adapters.kafka.ReplyListener",
    "payment_worker.adapters.kafka.reading_consumer",
    "payment_worker.adapters.postgres.PostgresStore",
    "payment_worker.adapters.postgres.make_pool",
}


def test_the_worker_relay_shim_and_replay_are_handed_their_clients() -> None:
    """The long-running entry points import no client class and no confluent_kafka Producer:
    the composition root builds their clients and they are typed on the ports."""
    entry_points = (
        "entrypoints/worker.py",
        "entrypoints/relay.py",
        "entrypoints/shim",
        "entrypoints/replay",
    )
    building = {
        module: sorted(found & CLIENTS)
        for module, found in modules().items()
        if module.startswith(entry_points) and found & CLIENTS
    }
    assert building == {}
