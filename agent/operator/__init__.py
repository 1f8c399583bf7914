"""The operator's side of the wire contract: ``reconcile-agent apply/get/watch/delete/events/job``.

Everything here is an MQTT client written against PROTOCOL.md alone, exactly like any orchestrator: it
publishes desired documents and reads the agents' retained statuses and live events. It shares the
agent's models (``agent.protocol``) so a document is refused locally for the same reason the agent would
refuse it, but never the agent's session, client id or state.
"""
