"""ticktape: shared code of the pipeline — settings, serde, Kafka clients, the pure
domain core (``ticktape.core``) and the ``ticktape`` command line."""

__version__ = "0.1.0"
