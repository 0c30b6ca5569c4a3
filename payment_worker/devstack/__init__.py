"""Development stand-ins, NOT part of the product: a Kafka-compatible broker launcher (Tansu)
and a server that plays the Ordering and Inventory services. Used by tests, demo, benchmarks."""
