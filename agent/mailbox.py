"""Messages between executions (updates and rollback) as stored in the runtime's durable mailbox.

Owns their encoding as text for the store's mail table; the kinds of mail are the core's
(:data:`agent.core.events.Mail`). No I/O.
"""

from __future__ import annotations

import dataclasses
import json
from typing import get_args

from agent.core.events import Mail

# The types are those of the union in the core, so a new kind of mail is stored without a second list.
_TYPES: dict[str, type[Mail]] = {cls.__name__: cls for cls in get_args(Mail)}


def encode(mail: Mail) -> str:
    return json.dumps({"type": type(mail).__name__, **dataclasses.asdict(mail)})


def decode(text: str) -> Mail:
    fields = json.loads(text)
    return _TYPES[fields.pop("type")](**fields)
