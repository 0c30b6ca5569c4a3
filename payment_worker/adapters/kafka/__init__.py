"""The confluent-kafka clients, each wrapping the library's errors in BrokerUnavailable.

config: what every client is configured with. consumer: the worker's group consumer, every
call on one thread of its own. producer: the model the producers share (produce_waiting, a
thread serving delivery reports, the fatal flag) and the outbox relay's producer. direct:
replay's producer. admin: topics and the cluster's metadata. replies: the shim's command
producer and reply listener. lag: the worker group's lag per partition.

Offsets are committed only behind the database (entrypoints/worker.py); what a command
publishes goes through the outbox, so no offset waits on a producer here.
"""

from payment_worker.adapters.kafka.admin import (
    TopicDirectory,
    broker_problem,
    broker_reachable,
    ensure_topics,
    topic_partitions,
)
from payment_worker.adapters.kafka.config import (
    CONSUMER_DEFAULTS,
    PRODUCER_DEFAULTS,
    BrokerUnavailable,
    consumer_defaults,
    fast_path_lease_s,
    for_consumer,
    for_producer,
    kafka_text,
)
from payment_worker.adapters.kafka.consumer import (
    ThreadedConsumer,
    reading_consumer,
    ready_messages,
    to_record,
)
from payment_worker.adapters.kafka.direct import DirectProducer
from payment_worker.adapters.kafka.lag import GroupLag
from payment_worker.adapters.kafka.producer import OutboxProducer, produce_waiting
from payment_worker.adapters.kafka.replies import CommandProducer, ReplyListener

__all__ = [
    "CONSUMER_DEFAULTS",
    "PRODUCER_DEFAULTS",
    "BrokerUnavailable",
    "CommandProducer",
    "DirectProducer",
    "GroupLag",
    "OutboxProducer",
    "ReplyListener",
    "ThreadedConsumer",
    "TopicDirectory",
    "broker_problem",
    "broker_reachable",
    "consumer_defaults",
    "ensure_topics",
    "fast_path_lease_s",
    "for_consumer",
    "for_producer",
    "kafka_text",
    "produce_waiting",
    "reading_consumer",
    "ready_messages",
    "to_record",
    "topic_partitions",
]
