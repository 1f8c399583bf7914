"""reconcile-agent: a per-node reconciliation agent driven over MQTT."""

__version__ = "0.1.0"
