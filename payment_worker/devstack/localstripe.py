"""localstripe, a stateful Stripe stand-in, for the demo, the bench and the tests: a process
on a port, in memory, keeping Stripe's promise about Idempotency-Key that localstripe alone
does not (a second POST with a key gets the first's answer).

Run as `python -m payment_worker.devstack.localstripe --port N`. Not the worker's code: only
the devstack, the bench and the tests start it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import httpx

API_KEY = "sk_test_localstripe"  # localstripe takes any key shaped sk_ + 3 characters or more

# Stripe's test cards as localstripe plays them.
PAYS = "4242424242424242"
DECLINED_AT_CHARGE = "4000000000000341"
NEEDS_AUTHENTICATION = "4000002500003155"


def start(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """localstripe on 127.0.0.1:`port`, its output in `log_path`; wait_until_answering next.
    In a session of its own, as the broker: a Ctrl-C meant for whoever started it does not end
    it before the worker that charges through it (its starter stops it, after that worker)."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "payment_worker.devstack.localstripe", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_until_answering(
    url: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout_s: float = 30.0,
    *,
    api_key: str = API_KEY,
    name: str = "localstripe",
) -> None:
    """Return once the Stripe stand-in `name` answers at `url` (a list of PaymentIntents with
    `api_key`); RuntimeError with its log's tail if it exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited ({process.returncode}): {log_path.read_text()[-2000:]}"
            )
        try:
            if httpx.get(f"{url}/v1/payment_intents", auth=(api_key, "")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(
        f"{name} did not answer within {timeout_s:.0f} s: {log_path.read_text()[-2000:]}"
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def card(url: str, number: str) -> str:
    """A PaymentMethod made on localstripe for a test card number: its pm_ id."""
    return cards(url, number, 1)[0]


def cards(url: str, number: str, count: int) -> list[str]:
    """`count` PaymentMethods made on localstripe for a test card number, over one connection
    (a client per request costs more than localstripe's answer): their pm_ ids."""
    fields = {
        "type": "card",
        "card[number]": number,
        "card[exp_month]": "12",
        "card[exp_year]": "2034",
        "card[cvc]": "123",
    }
    made = []
    with httpx.Client(base_url=url, auth=(API_KEY, "")) as client:
        for _ in range(count):
            answer = client.post("/v1/payment_methods", data=fields)
            answer.raise_for_status()
            made.append(str(answer.json()["id"]))
    return made


def intents(url: str) -> list[dict[str, Any]]:
    """Every PaymentIntent localstripe holds."""
    found: list[dict[str, Any]] = []
    params: dict[str, str] = {"limit": "100"}
    while True:
        page = httpx.get(f"{url}/v1/payment_intents", auth=(API_KEY, ""), params=params).json()
        found.extend(page["data"])
        if not page.get("has_more") or not page["data"]:
            return found
        params["starting_after"] = page["data"][-1]["id"]


def _idempotency(web: Any) -> Callable[..., Awaitable[Any]]:
    """What Stripe does with an Idempotency-Key: a POST's first successful answer is kept and
    given again to every later POST with that key on that path (localstripe ignores keys)."""
    answers: dict[tuple[str, str], tuple[int, bytes]] = {}

    async def middleware(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or key is None:
            return await handler(request)
        seen = answers.get((request.path, key))
        if seen is not None:
            return web.Response(status=seen[0], body=seen[1], content_type="application/json")
        response = await handler(request)
        if response.status == 200:
            answers[(request.path, key)] = (response.status, response.body)
        return response

    return cast(Callable[..., Awaitable[Any]], web.middleware(middleware))


def _cancel_with_reason(resources: Any) -> None:
    """Stripe takes a cancellation_reason and shows it on the PaymentIntent; localstripe
    refuses the parameter, so its cancel route is given one that keeps it."""
    cancel = resources.PaymentIntent._api_cancel
    route = "/v1/payment_intents/{id}/cancel"

    def api_cancel(id: str, cancellation_reason: str | None = None, **kwargs: Any) -> Any:
        intent = cancel(id, **kwargs)
        intent.cancellation_reason = cancellation_reason
        return intent

    routes = resources.extra_apis
    routes[:] = [(m, u, api_cancel if u == route else f) for m, u, f in routes]


def _missing_payment_method_as_stripe_says(resources: Any, errors: Any) -> None:
    """Stripe answers a PaymentMethod it does not have with code resource_missing on param
    payment_method; localstripe with a bare 404, which is what a wrong URL gets too."""
    method = resources.PaymentMethod
    retrieve = method._api_retrieve

    def api_retrieve(id: str) -> Any:
        if resources.store.get(f"{method.object}:{id}") is None:
            raise errors.UserError(
                404,
                f"No such PaymentMethod: '{id}'",
                {"code": "resource_missing", "param": "payment_method"},
            )
        return retrieve(id)

    method._api_retrieve = api_retrieve


def main() -> None:
    from aiohttp import web
    from localstripe import errors, resources

    # In memory only: localstripe otherwise shares /tmp/localstripe.pickle machine-wide.
    resources.Store.dump_to_disk = lambda self: None
    _cancel_with_reason(resources)  # before the server module makes its routes of them
    _missing_payment_method_as_stripe_says(resources, errors)
    from localstripe import server

    server.app.middlewares.append(_idempotency(web))
    if "--from-scratch" not in sys.argv:
        sys.argv.append("--from-scratch")
    server.start()


if __name__ == "__main__":
    main()
