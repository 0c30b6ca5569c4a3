"""The command line (`payment-worker`): help that teaches, flags before or after the
command, bad values refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from payment_worker.__main__ import build_parser
from payment_worker.entrypoints.cli import COMMANDS


def help_of(command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "payment_worker", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_commands_help_says_what_it_does_what_it_reads_and_shows_an_example(
    command: str,
) -> None:
    """`COMMAND --help` has its description, every variable it reads with its default, and an
    example."""
    text = help_of(command)
    assert COMMANDS[command]["description"][:60] in " ".join(text.split())
    for name in COMMANDS[command]["variables"]:
        assert f"PAYMENT_{name.upper()}  (default: " in text
    assert "example:\n  " in text and COMMANDS[command]["example"] in text


def test_help_shows_the_real_defaults() -> None:
    """The defaults shown are the settings' own: a schema name, a range, unset, a boolean."""
    text = help_of("run")
    assert "PAYMENT_DB_SCHEMA  (default: bc_payment)" in text
    assert "PAYMENT_GATEWAY_LATENCY_MS  (default: 100-500)" in text
    assert "PAYMENT_METRICS_PORT  (default: unset)" in text
    assert "PAYMENT_SCHEMA_REGISTRY_AUTO_REGISTER  (default: true)" in text


@pytest.mark.parametrize(
    "argv",
    [["--log-level", "debug", "topics"], ["topics", "--log-level", "DEBUG"]],
    ids=["before", "after"],
)
def test_the_log_level_flag_works_before_or_after_the_command(argv: list[str]) -> None:
    """`--log-level` is taken before or after the command's name, in any case."""
    args = build_parser().parse_args(argv)
    assert (args.command, args.log_level) == ("topics", "DEBUG")


def test_without_the_flag_there_is_no_level_to_override_the_setting() -> None:
    """Without the flag, PAYMENT_LOG_LEVEL decides: the parser supplies no level of its own."""
    assert getattr(build_parser().parse_args(["run"]), "log_level", None) is None


@pytest.mark.parametrize("argv", [["--log-level", "LOUD", "run"], ["run", "--log-level", "x"]])
def test_a_bad_log_level_is_refused_naming_the_choices(argv: list[str]) -> None:
    """A level that is not one of the four is a usage error (exit 2) that lists them."""
    done = subprocess.run(
        [sys.executable, "-m", "payment_worker", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "is not one of DEBUG, INFO, WARNING, ERROR" in done.stderr
