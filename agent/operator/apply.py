"""``apply FILE...``: publish desired documents at their next generation, optionally wait for the result."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from agent.exit_codes import EXIT_FAILED, EXIT_OK
from agent.operator.connection import Target
from agent.operator.documents import load_files
from agent.operator.generations import read_current
from agent.operator.outcome import Outcome
from agent.operator.progress import Goal, follow
from agent.operator.render import note, out, out_json
from agent.operator.rollback import Rollback, follow_rollback
from agent.operator.session import connect
from agent.operator.snapshot import Key
from agent.protocol import dumps


async def apply(args: argparse.Namespace, target: Target) -> int:
    # Every file is checked before anything is published: a bad third file must not leave two applied.
    planned = load_files(args.files, target.max_payload_bytes)
    as_json = args.output == "json"
    echo: Callable[[str], None] = note if as_json else out  # JSON mode keeps stdout for the result
    keys: list[Key] = [(p.node_id, p.execution_id) for p in planned]
    async with connect(target) as session:
        current = await read_current(session, keys)
        for warning in current.absent_nodes(keys):
            note(warning)
        goals: dict[Key, Goal] = {}
        for item, key in zip(planned, keys, strict=True):
            generation = current.next_generation(key)
            document = item.document(generation)
            await session.publish(session.topics.desired(*key), dumps(document), retain=True)
            goals[key] = Goal(item.desired_state, generation)
            echo(f"{item.name}  generation {generation} applied (desired {item.desired_state})")
        results: dict[Key, Outcome] = {}
        rollbacks: dict[Key, Rollback] = {}
        if args.wait:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + args.timeout
            known = dict(current.statuses)
            results = await follow(session, goals, known, args.timeout, echo)
            for key, reached in results.items():
                failed = not reached.ok and key in known and known[key].state in ("failed", "lost")
                if failed:  # if it was an update, the rest of the story: what runs now
                    rollback = await follow_rollback(
                        session, known[key], known, max(0.0, deadline - loop.time()), echo
                    )
                    if rollback is not None:
                        rollbacks[key] = rollback
    if not args.wait:
        if as_json:
            out_json([_result(key, goal, None, waited=False) for key, goal in goals.items()])
        return EXIT_OK
    for key, goal in goals.items():
        result = results.get(key)
        if result is None:
            echo(f"{key[0]}/{key[1]}  TIMED OUT after {args.timeout:g}s waiting for {goal.wanted}")
        elif result.ok:
            echo(f"{key[0]}/{key[1]}  ok: {result.summary}")
        else:
            rollback = rollbacks.get(key)
            tail = f"; {rollback.text()}" if rollback is not None else ""
            echo(f"{key[0]}/{key[1]}  FAILED: {result.summary}{tail}")
    if as_json:
        out_json(
            [
                _result(key, goal, results.get(key), waited=True, rollback=rollbacks.get(key))
                for key, goal in goals.items()
            ]
        )
    missed = sum(1 for key in goals if not (key in results and results[key].ok))
    if missed:
        note(f"reconcile-agent: {missed} of {len(goals)} executions did not reach their desired state")
        return EXIT_FAILED
    return EXIT_OK


def _result(
    key: Key, goal: Goal, result: Outcome | None, *, waited: bool, rollback: Rollback | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "node_id": key[0],
        "execution_id": key[1],
        "generation": goal.generation,
        "desired_state": goal.wanted,
    }
    if waited:
        document["result"] = "timeout" if result is None else ("ok" if result.ok else "failed")
        document["summary"] = "" if result is None else result.summary
        if result is not None and not result.ok:
            # What runs now after a failed update: the predecessor rolled back to, or null for no update.
            document["rollback"] = None if rollback is None else rollback.record()
    return document
