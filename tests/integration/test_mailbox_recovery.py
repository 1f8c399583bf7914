"""A message between executions that was committed but not yet acted on when the agent died.

The state is prepared exactly as a crash would leave it: N's `failed` decision and its RollbackFrom for P
committed in one transaction, P untouched. A fresh agent on that state directory must deliver the
message, so P takes over once (and N learns it), with revisions continuing where they were.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agent.boot import boot_time
from agent.core.actions import Tell
from agent.core.clock import Now
from agent.core.events import DesiredReceived, ProcessExited, ProcessStarted, RollbackFrom, TimerFired
from agent.core.lifecycle import decide
from agent.core.model import Absent, Execution, ProcessRef
from agent.mailbox import encode
from agent.protocol import Accepted, parse_desired
from agent.store import Store
from tests.support.agent import StatusLog, config_for, desired, events_topic, running_agent, sleeper
from tests.support.broker import Broker
from tests.support.mqtt import Probe

NODE = "node-1"


def received(document: dict[str, Any]) -> DesiredReceived:
    parsed = parse_desired(str(document["execution_id"]), json.dumps(document).encode(), 1 << 20)
    assert isinstance(parsed, Accepted), parsed
    return DesiredReceived(parsed.document, parsed.digest)


def gone_ref(attempt: int) -> ProcessRef:
    """A process that has ended long ago: never alive, so recovery reads its (absent) exit file."""
    return ProcessRef(attempt=attempt, pid=999_999, started=1.0, supervisor_pid=-1, supervisor_started=0.0)


def prepare(state_dir: Path) -> tuple[Execution, Execution]:
    """P stopped for N, N failed before it was stable, and the rollback message still in the mailbox."""
    now = Now(time.time() - 60, boot_time() - 60)
    p_doc = desired("p", command=sleeper())
    n_doc = {**desired("n", command=["false"], window_s=30), "previous_execution_id": "p"}
    p: Execution | Absent = Absent(execution_id="p", node_id=NODE)
    n: Execution | Absent = Absent(execution_id="n", node_id=NODE)
    for event in (received(p_doc), ProcessStarted(gone_ref(1)), TimerFired("window")):
        p, _ = decide(p, event, now)
        now = Now(now.wall + 1, now.boot + 1)
    n, actions = decide(n, received(n_doc), now)
    (handover,) = [a for a in actions if isinstance(a, Tell)]
    p, actions = decide(p, handover.event, now)
    p, actions = decide(p, ProcessExited(1, 143), now)
    (released,) = [a for a in actions if isinstance(a, Tell)]
    n, actions = decide(n, released.event, now)
    n, _ = decide(n, ProcessStarted(gone_ref(1)), now)
    n, actions = decide(n, ProcessExited(1, 1), now)
    (rollback,) = [a for a in actions if isinstance(a, Tell)]
    assert isinstance(rollback.event, RollbackFrom)
    assert isinstance(p, Execution)
    assert isinstance(n, Execution)
    store = Store(state_dir / "agent.db", NODE)
    try:
        store.commit(p)
        store.commit(n, mail=[(rollback.execution_id, encode(rollback.event))])  # ...and then the crash
    finally:
        store.close()
    return p, n


async def test_a_rollback_waiting_in_the_mailbox_is_delivered_after_a_crash(
    broker: Broker, state_dir: Path
) -> None:
    p, n = prepare(state_dir)
    async with Probe(broker.host, broker.port) as probe:
        await probe.subscribe(f"reconcile/v1/nodes/{NODE}/#")
        async with running_agent(config_for(broker, state_dir)):
            back = await StatusLog(probe, NODE, "p").wait_state("running")
            told = await StatusLog(probe, NODE, "n").wait(lambda d: d["details"].get("rolled_back_to") == "p")
        rollbacks = {
            m.payload for m in probe.messages_on(events_topic(NODE)) if m.json()["type"] == "rollback"
        }
    assert back["details"]["rollback"]["from"] == "n"
    # A state can be published twice in a row since issue 12: an exact republish when the broker had no
    # session, a desired_missing mark when its retained document is absent (this broker never had one).
    states = StatusLog(probe, NODE, "p").states()
    steps = [state for i, state in enumerate(states) if i == 0 or state != states[i - 1]]
    assert steps[:3] == ["starting", "validating", "running"]
    assert StatusLog(probe, NODE, "p").revisions()[0] == p.revision + 1  # continues from the stored mark
    assert told["revision"] == n.revision + 1
    assert len(rollbacks) == 1
    store = Store(state_dir / "agent.db", NODE)
    try:
        assert store.mail() == []  # acted on, and deleted with the decision that acted on it
    finally:
        store.close()
