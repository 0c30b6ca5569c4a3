"""The root of every exception the package raises on purpose."""


class PaymentWorkerError(Exception):
    """Base class of the package's own errors."""


class ConfigurationError(PaymentWorkerError):
    """A setting is missing or malformed; start-up stops with one line naming it."""


class RetryableError(PaymentWorkerError):
    """A transient failure (timeout, 5xx, lost connection, serialization failure): try again."""


class InfrastructureUnavailable(RetryableError):
    """A dependency every record needs (the database, the broker, the schema registry) is
    down: records wait for it, however long, rather than being answered or given up on."""


class PermanentError(PaymentWorkerError):
    """A failure that will not go away by trying again (undecodable input, broken rule)."""


class GatewayRefusedCredentials(PaymentWorkerError):
    """The payment gateway refused our API key (401) or its permissions (403): a fault of
    ours, never the customer's, so no payment is declined for it. Whoever meets it stops
    taking commands and says so in one line; the command is not committed, so it is taken
    again (its payment still pending) once a worker runs with a key the gateway accepts."""


class GatewayMisconfigured(PaymentWorkerError):
    """The payment gateway answered our start-up check with something other than yes or a
    transient failure (a wrong API base, a key of the wrong kind): the worker does not start."""
