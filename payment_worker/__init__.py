"""payment-worker: takes payments from Kafka commands, records them in PostgreSQL, announces
them as Avro events through a transactional outbox."""

from payment_worker.config import Settings, load_settings

__version__ = "0.1.0"
__all__ = ["Settings", "__version__", "load_settings"]
