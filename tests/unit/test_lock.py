"""The lock files: every dependency pinned, hashed, agreeing with pyproject.toml and each other.

`make lock` writes them (uv pip compile); `make install` and the Dockerfile install from them.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "requirements.lock"
DEV = ROOT / "requirements-dev.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+?)\s*(?:;\s*(.+?))?\s*\\?$")


def pins(path: Path) -> dict[str, tuple[str, str | None, int]]:
    """name -> (version, marker, number of hashes) of a hashed requirements file."""
    found: dict[str, tuple[str, str | None, int]] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            name, version, marker = match.groups()
            current = canonicalize_name(name)
            assert current not in found, f"{name} pinned twice in {path.name}"
            found[current] = (version, marker, 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, marker, hashes = found[current]
            found[current] = (version, marker, hashes + 1)
        elif line.strip() and not line.lstrip().startswith(("#", "--hash")):
            raise AssertionError(f"unexpected line in {path.name}: {line!r}")
    return found


def declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    listed = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(text) for text in listed]


@pytest.mark.parametrize(("lock", "extra"), [(RUNTIME, None), (DEV, None), (DEV, "dev")])
def test_every_declared_dependency_is_pinned_within_its_range(
    lock: Path, extra: str | None
) -> None:
    locked = pins(lock)
    for requirement in declared(extra):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in {lock.name}: run `make lock`"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, outside {requirement}: run `make lock`"
        )


@pytest.mark.parametrize("lock", [RUNTIME, DEV])
def test_every_pin_is_exact_and_hashed(lock: Path) -> None:
    locked = pins(lock)
    assert locked
    unhashed = [name for name, (_, _, hashes) in locked.items() if hashes == 0]
    assert not unhashed, f"pins without a hash in {lock.name}: {unhashed}"


def test_the_dev_lock_keeps_the_runtime_versions() -> None:
    """The image (runtime lock) and the test suite (dev lock) run the same runtime versions."""
    runtime, dev = pins(RUNTIME), pins(DEV)
    differ = {
        name: (version, dev[name][0])
        for name, (version, _, _) in runtime.items()
        if name in dev and dev[name][0] != version
    }
    assert not differ
    assert set(runtime) <= set(dev)


def test_this_environment_runs_the_locked_versions() -> None:
    """`make install` installed from the dev lock: what is imported is what is pinned."""
    environment = default_environment()
    mismatched = {}
    for name, (version, marker, _) in pins(DEV).items():
        if marker and not Marker(marker).evaluate(environment):
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            mismatched[name] = (version, None)
            continue
        if installed != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"locked vs installed: {mismatched}; run `make install`"
