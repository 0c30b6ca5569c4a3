"""`payment-worker topics`: the configured topics, created where missing.

Existing topics are left as they are (their partition count is reported, never changed); the
missing ones are created with PAYMENT_TOPIC_PARTITIONS partitions and a replication factor of
PAYMENT_TOPIC_REPLICATION (unset: the broker's default.replication.factor)."""

from __future__ import annotations

from payment_worker.adapters.kafka import BrokerUnavailable, ensure_topics, topic_partitions
from payment_worker.config import Settings
from payment_worker.exceptions import PaymentWorkerError


def report_topics(
    settings: Settings, *, dry_run: bool = False, timeout_s: float = 10.0
) -> list[str]:
    """Create what is missing (unless `dry_run`); one line per topic saying what it is."""
    names = settings.own_topics()
    config = settings.kafka_common()
    replication = settings.topic_replication or -1
    where = f"PAYMENT_KAFKA_BOOTSTRAP_SERVERS={settings.kafka_bootstrap_servers}"
    try:
        found = topic_partitions(config, names, timeout_s)
        missing = {name: settings.topic_partitions for name, n in found.items() if n is None}
        created = (
            set()
            if dry_run or not missing
            else set(ensure_topics(config, missing, timeout_s, replication_factor=replication))
        )
        if created:
            found = topic_partitions(config, names, timeout_s)
    except BrokerUnavailable as exc:
        raise PaymentWorkerError(f"Kafka is not reachable at {where}: {exc}") from None
    factor = "the broker's default" if replication == -1 else str(replication)
    width = max(len(name) for name in names)
    lines = []
    for name in names:
        if name in created:
            what = f"created  {found[name]} partitions, replication factor {factor}"
        elif name in missing:
            verb = "would create" if dry_run else "missing"
            what = f"{verb}  {settings.topic_partitions} partitions, replication factor {factor}"
        else:
            what = f"exists   {found[name]} partitions (left as it is)"
        lines.append(f"{name:<{width}}  {what}")
    return lines
