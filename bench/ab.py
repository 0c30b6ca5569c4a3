"""`make bench-ab BASELINE=REV`: the worker's CPU per command, this checkout's against another
revision's, measured alternately on one stack (one broker, one database, one dev server), so
that the machine's drift falls on both alike. Only the worker process runs the baseline's code;
the load generator and the stack are this checkout's. Each worker finds its package on
PYTHONPATH alone (PYTHONSAFEPATH: `python -m` would otherwise put the current directory, this
checkout, first, and the baseline's run would be this checkout's code).

Prints each pair and the medians; writes bench/ab.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tarfile
import tempfile
from pathlib import Path

from bench.run import ROOT, close_producers, e2e, exit_on_sigterm, start_stack


def export(revision: str, into: Path) -> Path:
    """The tree of `revision` (as git has it) unpacked under `into`."""
    archive = into / "baseline.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), revision],  # noqa: S607
        check=True,
    )
    tree = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", required=True, help="the revision to compare against")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("-n", type=int, default=3000, help="commands per run")
    args = parser.parse_args()
    exit_on_sigterm()
    stack = start_stack()
    figures: dict[str, list[float]] = {"baseline": [], "this": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            baseline = export(args.baseline, Path(tmp))
            for pair in range(args.pairs):
                # Alternate which goes first, so neither always meets a warmer machine.
                order = ["baseline", "this"] if pair % 2 == 0 else ["this", "baseline"]
                for variant in order:
                    tree = baseline if variant == "baseline" else ROOT
                    result = e2e(
                        stack,
                        f"ab-{variant}-{pair}",
                        args.n,
                        PYTHONPATH=str(tree),
                        PYTHONSAFEPATH="1",
                    )
                    figures[variant].append(result["cpu_ms_per_command"])
                    print(
                        f"pair {pair + 1} {variant:>8}: {result['cpu_ms_per_command']:.3f} ms"
                        f" CPU per command, {result['per_s']:.0f} commands/s",
                        flush=True,
                    )
    finally:
        close_producers()
        stack.close()
    medians = {k: statistics.median(v) for k, v in figures.items()}
    won = sum(t <= b for t, b in zip(figures["this"], figures["baseline"], strict=True))
    summary = {
        "baseline": args.baseline,
        "broker": stack.broker.describe(),
        "cpu_ms_per_command": figures,
        "median": medians,
        "ratio": medians["this"] / medians["baseline"],
        "pairs_won_by_this": f"{won} of {args.pairs}",
    }
    (ROOT / "bench" / "ab.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"median CPU per command: this {medians['this']:.3f} ms, baseline {args.baseline} "
        f"{medians['baseline']:.3f} ms (ratio {summary['ratio']:.2f}; this lower or equal in "
        f"{won} of {args.pairs} pairs)"
    )


if __name__ == "__main__":
    main()
