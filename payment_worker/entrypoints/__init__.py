"""The things that run: the worker loop, the outbox relay, the HTTP shim, replay, the demo."""
