"""Messages between executions (updates and rollback) as stored in the runtime's durable mailbox."""

from __future__ import annotations

import dataclasses
import json

from agent.core.events import HandOver, Mail, Released, RollbackFrom, RolledBack, SuccessorStable

_TYPES: dict[str, type[Mail]] = {
    cls.__name__: cls for cls in (HandOver, Released, SuccessorStable, RollbackFrom, RolledBack)
}


def encode(mail: Mail) -> str:
    return json.dumps({"type": type(mail).__name__, **dataclasses.asdict(mail)})


def decode(text: str) -> Mail:
    fields = json.loads(text)
    return _TYPES[fields.pop("type")](**fields)
