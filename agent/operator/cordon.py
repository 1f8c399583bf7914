"""``cordon NODE`` / ``uncordon NODE``: publish the node's retained control document at the next
generation, then wait until the node shows it (or says why not).

The next generation is one above the retained control document's (1 if there is none), as ``apply``
does for desired documents. The agent confirms an accepted document by republishing its node status
(``cordoned``), and refuses a bad or stale one with a ``control_rejected`` event carrying the document's
generation; both are read on subscriptions made before the publish, so neither can be missed. A node
that is not online keeps the retained document and applies it when it connects: the command says so and
does not wait.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from agent.exit_codes import EXIT_OK
from agent.operator.connection import Target
from agent.operator.errors import OperatorError
from agent.operator.generations import desired_generation
from agent.operator.nodes import node_documents
from agent.operator.render import note, out
from agent.operator.session import Session, connect
from agent.protocol import dumps


async def cordon(args: argparse.Namespace, target: Target) -> int:
    return await _set(args, target, cordoned=True)


async def uncordon(args: argparse.Namespace, target: Target) -> int:
    return await _set(args, target, cordoned=False)


async def _set(args: argparse.Namespace, target: Target, *, cordoned: bool) -> int:
    node: str = args.node
    what = "cordoned" if cordoned else "uncordoned"
    async with connect(target) as session:
        topics = session.topics
        await session.subscribe(topics.control(node), topics.node_status(node), topics.events(node))
        retained = await session.fence()
        generation = args.generation or 1 + max(
            (desired_generation(m.payload) for m in retained if m.topic == topics.control(node)), default=0
        )
        status = node_documents(topics, retained).get(node)
        payload = dumps({"generation": generation, "cordoned": cordoned})
        await session.publish(topics.control(node), payload, retain=True)
        if status is None or status.get("state") != "online":
            why = "has never connected (no node status)" if status is None else f"is {status.get('state')}"
            note(f"reconcile-agent: node {node} {why}; its agent applies this once it connects")
            out(f"{node}  {what} (control generation {generation}, published)")
            return EXIT_OK
        await _confirmed(session, node, generation, cordoned, args.timeout)
    out(f"{node}  {what} (control generation {generation})")
    return EXIT_OK


async def _confirmed(session: Session, node: str, generation: int, cordoned: bool, timeout: float) -> None:
    """Return once ``node`` shows the cordon as asked; OperatorError if it refuses or stays silent."""
    topics = session.topics
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (message := await session.next(max(0.0, deadline - loop.time()))) is not None:
        document = _object(message.payload)
        if document is None:
            continue
        refused = (
            message.topic == topics.events(node)
            and document.get("type") == "control_rejected"
            and document.get("generation") == generation
        )
        if refused:
            raise OperatorError(
                f"node {node} rejected control generation {generation}: {document.get('reason')}"
            )
        # A live node status only: the retained one was published before our document.
        shown = message.topic == topics.node_status(node) and not message.retain
        if shown and document.get("cordoned") is cordoned:
            return
    raise OperatorError(
        f"node {node} did not show cordoned={str(cordoned).lower()} within {timeout:g}s; the control "
        f"document (generation {generation}) stays retained and applies when the agent reads it"
    )


def _object(payload: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
