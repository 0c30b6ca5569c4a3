"""The shim's Prometheus metrics, registered once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("payment_shim_requests_total", "POST /payments answered, by status.", ["status"])
LATENCY = Histogram(
    "payment_shim_request_seconds",
    "POST /payments latency.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 15, 30),
)
IN_FLIGHT = Gauge(
    "payment_shim_in_flight", "POST /payments being handled (body read or reply awaited)."
)
TOO_SLOW = Counter(
    "payment_shim_body_timeouts_total", "Requests answered 408: the body came too slowly."
)
TIMEOUTS = Counter("payment_shim_reply_timeouts_total", "Requests answered 504.")
WAITING = Gauge("payment_shim_waiting_replies", "Correlation ids waiting for a reply.")
DROPPED = Gauge(
    "payment_shim_dropped_replies",
    "Replies received and dropped (by reason: payment_shim_replies_dropped_total).",
)
