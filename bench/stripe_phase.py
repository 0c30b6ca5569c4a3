"""The bench's Stripe phase: one worker with the Stripe gateway on localstripe (a PaymentIntent
created, then confirmed, per command), its commands/s and CPU per command beside the
simulator's.

localstripe answers one request at a time in one Python process, and each charge it answers
costs it more the more it holds (it lists the charge's refunds by scanning every object it
keeps): its speed caps this figure far below Stripe's. The worker's CPU per command is
higher than with the simulator too (Stripe's library, two HTTP requests per command). Both
are recorded, and the line printed says which caps the figure.

`python -m bench.stripe_phase` runs this phase alone on a stack of its own, with the
simulator's run at the same N as its baseline; `make bench` runs it last.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from payment_worker.devstack import localstripe
from payment_worker.devstack.broker import free_port

N = 1000  # make bench's (300 in --quick); localstripe slows as it fills, so N moves the figure
WARM_UP = 50
# localstripe answers the worker's 2,000 commands in flight one request at a time: a request
# can wait behind the others for longer than the 30 s Stripe has by default.
TIMEOUT_S = "300"


def stripe_phase(
    measure: Callable[..., dict[str, Any]], logs: Path, n: int = N, warm_up: int = WARM_UP
) -> dict[str, Any]:
    """One worker charging through the Stripe gateway on a localstripe started here, measured
    by `measure` (bench.run's e2e on a stack): its figures, and localstripe's own CPU per
    command. The PaymentMethods (4242, one per command: Stripe charges one that no customer
    holds only once) are made before the run."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = logs / "localstripe.log"
    process = localstripe.start(port, log)
    try:
        localstripe.wait_until_answering(url, process, log)
        methods = localstripe.cards(url, localstripe.PAYS, warm_up + n)
        return measure(
            "stripe-localstripe",
            n,
            warm_up=warm_up,
            payment_methods=methods,
            watch={"localstripe": process.pid},
            PAYMENT_GATEWAY="stripe",
            PAYMENT_STRIPE_API_KEY=localstripe.API_KEY,
            PAYMENT_STRIPE_API_BASE=url,
            PAYMENT_STRIPE_TIMEOUT_S=TIMEOUT_S,
        )
    finally:
        localstripe.stop(process)


def record(results: dict[str, Any], run: dict[str, Any]) -> str:
    """The phase's figures into `results`; the line that reports them beside the simulator's
    (`e2e_latency0_per_s`, in results already)."""
    results["stripe_n"] = run["n"]
    results["e2e_stripe_localstripe_per_s"] = run["per_s"]
    results["worker_cpu_ms_per_command_stripe"] = run["cpu_ms_per_command"]
    results["localstripe_cpu_ms_per_command"] = run["localstripe_cpu_ms_per_command"]
    worker_ms, stand_in_ms = run["cpu_ms_per_command"], run["localstripe_cpu_ms_per_command"]
    line = (
        f"  e2e Stripe gateway on localstripe, 1 worker, N={run['n']}: {run['per_s']:,.0f}/s "
        f"(simulator: {results['e2e_latency0_per_s']:,.0f}/s); CPU per command: worker "
        f"{worker_ms:.1f} ms (simulator: {results['worker_cpu_ms_per_command']:.1f}), "
        f"localstripe {stand_in_ms:.1f} ms. localstripe is a single-threaded Python server: "
        f"one core caps it at ~{1000 / stand_in_ms:,.0f}/s here, less as it fills"
    )
    if worker_ms > stand_in_ms:
        line += f"; the worker's own CPU caps it first (~{1000 / worker_ms:,.0f}/s on one core)"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=N, help=f"commands measured (default {N})")
    args = parser.parse_args()
    from bench.run import LOGS, close_producers, drop, e2e, exit_on_sigterm, start_stack

    exit_on_sigterm()
    stack = start_stack()
    results: dict[str, Any] = {"broker": stack.broker.describe()}
    print(f"bench, Stripe phase: N={args.n} on {os.cpu_count()} cores, {results['broker']}")
    try:
        simulated = e2e(stack, "latency0", args.n, warm_up=WARM_UP)
        drop(simulated["scenario"])
        results["e2e_latency0_per_s"] = simulated["per_s"]
        results["worker_cpu_ms_per_command"] = simulated["cpu_ms_per_command"]
        run = stripe_phase(functools.partial(e2e, stack), LOGS, args.n)
        drop(run["scenario"])
        print(record(results, run), flush=True)
    finally:
        close_producers()
        stack.close()
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()})


if __name__ == "__main__":
    main()
