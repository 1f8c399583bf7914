"""The typed updates of the core's state name every field of the model, with the model's type.

``Execution.replace(**fields)`` is checked by mypy against :class:`ExecutionFields`; this keeps that
TypedDict equal to the model, so a field added to the model cannot be left out of the typed updates.
"""

from __future__ import annotations

from typing import get_type_hints

import pytest
from pydantic import BaseModel

from agent.core.model import Execution, ExecutionFields, Publishing, PublishingFields


@pytest.mark.parametrize(("model", "fields"), [(Execution, ExecutionFields), (Publishing, PublishingFields)])
def test_the_typed_fields_are_the_models(model: type[BaseModel], fields: type) -> None:
    declared = {name: info.annotation for name, info in model.model_fields.items()}
    assert get_type_hints(fields) == declared
