"""Node control documents on ``P/nodes/N/control`` (PROTOCOL.md, Node control and admission), parsed.

``{"generation": n, "cordoned": true | false}``, both required, nothing else. Read as strictly as a
desired document (agent/strict_json.py, no type coercion: a generation of ``"3"``, ``1.5`` or ``true`` is
refused, so is a ``cordoned`` of ``1`` or ``"yes"``). Never raises: whatever is wrong becomes a
:class:`ControlRejected` whose reason names the field. What the agent does with a parsed document (the
ordering by generation) is agent/core/control.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from agent import strict_json
from agent.protocol import describe_validation_error, payload_digest, readable_generation

# A control document is two fields: anything much bigger is not one, and is refused unread.
MAX_CONTROL_BYTES = 4096

EMPTY_REASON = (
    'empty control document: ignored, the cordon stays as it is (publish {"generation": <next>, '
    '"cordoned": false} to uncordon: reconcile-agent uncordon)'
)


class ControlDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    generation: Annotated[StrictInt, Field(ge=1)]
    cordoned: StrictBool


@dataclass(frozen=True)
class ControlAccepted:
    document: ControlDocument
    digest: str


@dataclass(frozen=True)
class ControlRejected:
    """A control payload that cannot be used; ``generation`` None when it could not be read."""

    generation: int | None
    reason: str
    digest: str


ControlParsed = ControlAccepted | ControlRejected


def parse_control(payload: bytes) -> ControlParsed:
    digest = payload_digest(payload)
    if not payload:
        # Clearing the retained topic is not an uncordon: a clean-up script that wipes retained topics
        # must not quietly put a node under maintenance back into service (docs/protocol.md).
        return ControlRejected(None, EMPTY_REASON, digest)
    if len(payload) > MAX_CONTROL_BYTES:
        return ControlRejected(
            None, f"payload is {len(payload)} bytes, over the limit of {MAX_CONTROL_BYTES}", digest
        )
    try:
        raw = strict_json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return ControlRejected(None, f"payload is not JSON: {exc}", digest)
    except strict_json.NotAccepted as exc:
        return ControlRejected(
            readable_generation(exc.value), f"payload is not JSON we accept: {exc}", digest
        )
    except RecursionError:
        return ControlRejected(None, "payload is not JSON we accept: it nests too deeply", digest)
    if not isinstance(raw, dict):
        return ControlRejected(None, f"payload is JSON {type(raw).__name__}, not an object", digest)
    try:
        document = ControlDocument.model_validate(raw)
    except ValidationError as exc:
        return ControlRejected(readable_generation(raw), describe_validation_error(exc), digest)
    return ControlAccepted(document, digest)


def generation_of(parsed: ControlParsed) -> int | None:
    """The generation a control payload carries, if it could be read (for the ``control_rejected`` event)."""
    return parsed.document.generation if isinstance(parsed, ControlAccepted) else parsed.generation
