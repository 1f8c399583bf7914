"""Desired payloads nobody here would write: valid documents mutated field by field, and raw bytes.

Plain functions driven by a ``random.Random``, so the property tests (through hypothesis, which hands
them a ``st.randoms()`` it can replay and shrink) and ``bench/fuzz.py`` (a seeded ``Random``, fast enough
for 100,000 payloads) use the same mutations. A mutated document is a tree of JSON values plus two
markers the standard encoder cannot express: :class:`Raw` (JSON text written as is: numbers of 5,000
digits, ``1e999``, nesting too deep to build as objects) and :class:`Pairs` (an object with a duplicate key).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

FIELDS = ("execution_id", "job_id", "generation", "desired_state", "previous_execution_id", "spec")


@dataclass(frozen=True)
class Raw:
    """JSON text put into the payload as it is."""

    text: str


@dataclass(frozen=True)
class Pairs:
    """A JSON object written from its pairs, in order: the same key may appear twice."""

    pairs: tuple[tuple[str, Any], ...]


# --- Valid documents ---------------------------------------------------------------------------------------


def valid_id(rng: random.Random, prefix: str = "x") -> str:
    alphabet = string.ascii_letters + string.digits + "._-"
    return prefix + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))


def valid_spec(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {"command": ["sleep", str(rng.randint(1, 600))]}
    if rng.random() < 0.5:
        spec["env"] = {f"V{i}": valid_id(rng, "v") for i in range(rng.randint(0, 3))}
    if rng.random() < 0.3:
        spec["working_dir"] = rng.choice(["/", "/tmp", "/var/tmp"])
    if rng.random() < 0.5:
        spec["restart"] = {
            "policy": rng.choice(["never", "on-failure", "always"]),
            "max_restarts": rng.randint(0, 5),
            "backoff_s": rng.choice([0, 0.5, 1]),
            "backoff_max_s": rng.choice([1, 60]),
        }
    if rng.random() < 0.5:
        spec["validation"] = {"window_s": rng.choice([0, 0.2, 10]), "deadline_s": rng.choice([1, 300])}
    if rng.random() < 0.3:
        kind = rng.choice(["exec", "http", "tcp"])
        checks: dict[str, dict[str, Any]] = {
            "exec": {"command": ["true"]},
            "http": {"url": "http://127.0.0.1:8080/healthz"},
            "tcp": {"port": rng.randint(1, 65535)},
        }
        check = checks[kind]
        spec["probe"] = {kind: check, "period_s": 1, "timeout_s": 0.5, "failure_threshold": 2}
    if rng.random() < 0.3:
        spec["stop"] = {"signal": rng.choice(["SIGTERM", "SIGINT", "SIGKILL"]), "grace_s": rng.choice([0, 5])}
    if rng.random() < 0.2:
        spec["update_strategy"] = rng.choice(["stop_first", "start_first"])
    if rng.random() < 0.2:
        spec["timeout_s"] = rng.choice([1, 3600])
    return spec


def valid_document(rng: random.Random, execution_id: str) -> dict[str, Any]:
    state_type = rng.choice(["running", "running", "pending", "stopped"])
    document: dict[str, Any] = {
        "execution_id": execution_id,
        "generation": rng.randint(1, 5),
        "desired_state": {"state_type": state_type},
    }
    if state_type != "stopped" or rng.random() < 0.5:
        document["spec"] = valid_spec(rng)
    if rng.random() < 0.3:
        document["job_id"] = valid_id(rng, "job")
    if rng.random() < 0.2:
        document["previous_execution_id"] = valid_id(rng, "p")
    if rng.random() < 0.3:
        document["desired_state"]["message"] = rng.choice(["", "roll out", odd_string(rng)])
        document["desired_state"]["details"] = {"who": "fuzz", "n": rng.randint(0, 9)}
    return document


# --- Odd values --------------------------------------------------------------------------------------------

ODD_CHARACTERS = (
    "\x00",  # NUL: no C string, no exec argument, no path may hold it
    "\ud800",  # a lone high surrogate: no UTF-8 encoding
    "\udfff",  # a lone low surrogate
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u200b",  # ZERO WIDTH SPACE
    "\u200d",  # ZERO WIDTH JOINER
    "\ufeff",  # BOM / ZERO WIDTH NO-BREAK SPACE
    "\u0301",  # a combining acute accent with nothing to combine with
    "\U0001f4a9",  # outside the BMP: a surrogate pair in UTF-16
    "\x7f",
    "\x1b[31m",  # a terminal escape
    "\n",
    "\r",
    "\t",
    "=",
    "/",
    "+",
    "#",
    "\\",
    '"',
    "\u0000\u0000",
    "\uffff",
    "\U0010ffff",
    "\u4e2d",
    "\u0645",
)


def odd_string(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.15:
        return ""
    if roll < 0.3:
        # long: up to past one exec argument (128 KiB) and past the payload limit's neighbourhood
        return rng.choice(["a", "\u4e2d", "\U0001f4a9"]) * rng.choice([300, 4097, 70_000, 131_073])
    return "".join(
        rng.choice(ODD_CHARACTERS) if rng.random() < 0.5 else rng.choice(string.printable)
        for _ in range(rng.randint(1, 12))
    )


def huge_number(rng: random.Random) -> Any:
    return rng.choice(
        [
            2**63,
            2**64,
            -(2**63) - 1,
            10 ** rng.randint(19, 300),
            -(10 ** rng.randint(19, 300)),
            Raw("9" * rng.choice([4300, 4301, 5000, 50_000])),  # past Python's int-from-text limit
            Raw("-" + "9" * 4301),
            Raw("1e999"),  # a float literal that overflows to infinity
            Raw("-1e999"),
            Raw("1e-999"),
            Raw("0." + "0" * 5000 + "1"),
            1.7976931348623157e308,
            5e-324,
            -1,
            -0.0,
            -(10**9),
        ]
    )


def non_finite(rng: random.Random) -> Any:
    return rng.choice([float("nan"), float("inf"), float("-inf"), Raw("NaN"), Raw("-Infinity")])


def deep(rng: random.Random) -> Any:
    depth = rng.choice([20, 64, 65, 100, 254, 300, 999, 1_100, 20_000])
    opening, closing = rng.choice([("[", "]"), ('{"a":', "}")])
    return Raw(opening * depth + "1" + closing * depth)


def wrong_type(rng: random.Random) -> Any:
    return rng.choice(
        [None, True, False, 0, 1, 1.5, "", "1", "running", [], {}, ["a"], {"a": 1}, [[]], [None]]
    )


ODD_KINDS: tuple[Callable[[random.Random], Any], ...] = (
    wrong_type,
    huge_number,
    non_finite,
    deep,
    odd_string,
)


def odd_value(rng: random.Random) -> Any:
    return rng.choice(ODD_KINDS)(rng)


# --- Mutations of a valid document ----------------------------------------------------------------------

Path = tuple[str | int, ...]


def paths(value: Any, here: Path = ()) -> list[Path]:
    """Every place in a JSON tree, the root first."""
    found = [here]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*here, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*here, index))
    return found


def _at(tree: Any, path: Path) -> Any:
    for step in path:
        tree = tree[step]
    return tree


def _replace(tree: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {k: (_replace(v, rest, value) if k == head else v) for k, v in tree.items()}
    return [(_replace(v, rest, value) if i == head else v) for i, v in enumerate(tree)]


def _objects(tree: Any) -> list[Path]:
    return [p for p in paths(tree) if isinstance(_at(tree, p), dict)]


def replace_field(rng: random.Random, tree: Any, odd: Callable[[random.Random], Any]) -> Any:
    return _replace(tree, rng.choice(paths(tree)[1:] or [()]), odd(rng))


def drop_field(rng: random.Random, tree: Any, odd: Callable[[random.Random], Any]) -> Any:
    places = [p for p in paths(tree)[1:] if isinstance(p[-1], str)]
    if not places:
        return tree
    path = rng.choice(places)
    parent = _at(tree, path[:-1])
    return _replace(tree, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})


def unknown_field(rng: random.Random, tree: Any, odd: Callable[[random.Random], Any]) -> Any:
    objects = _objects(tree)
    if not objects:
        return tree
    path = rng.choice(objects)
    key = rng.choice(["bogus", "Generation", "spec ", "", odd_string(rng)[:40]])
    return _replace(tree, path, {**_at(tree, path), key: odd(rng) if rng.random() < 0.5 else 1})


def duplicate_key(rng: random.Random, tree: Any, odd: Callable[[random.Random], Any]) -> Any:
    path = rng.choice([p for p in _objects(tree) if _at(tree, p)] or [()])
    obj = _at(tree, path)
    if not isinstance(obj, dict) or not obj:
        return tree
    key = rng.choice(list(obj))
    again = rng.choice([obj[key], odd(rng), 2, "stopped"])
    pairs = list(obj.items())
    pairs.insert(rng.randint(0, len(pairs)), (key, again))
    return _replace(tree, path, Pairs(tuple(pairs)))


def os_limit(rng: random.Random, tree: Any, odd: Callable[[random.Random], Any]) -> Any:
    """What the OS refuses at exec time although it is a well-formed document (issue 9, part 2)."""
    if not isinstance(tree, dict):
        return tree
    spec = dict(tree["spec"]) if isinstance(tree.get("spec"), dict) else {"command": ["sleep", "1"]}
    case = rng.randrange(9)
    if case == 0:
        spec["command"] = ["sleep\x001"]
    elif case == 1:
        spec["command"] = ["sh", "-c", "echo " + "a" * rng.choice([131_071, 131_072, 140_000])]
    elif case == 2:
        spec["env"] = {rng.choice(["", "A=B", "=", "A\x00B"]): "x"}
    elif case == 3:
        spec["env"] = {"A": "value\x00hidden"}
    elif case == 4:
        spec["working_dir"] = rng.choice(["relative/dir", ".", "", "/tmp/\x00", "/" + "d" * 300, "/a" * 2100])
    elif case == 5:
        spec["probe"] = {"exec": {"command": ["true\x00"]}}
    elif case == 6:
        spec["command"] = ["x" * 1000] * rng.choice([200, 1100])  # many arguments: the total counts
    elif case == 7:
        spec["env"] = {f"V{i}": "v" * 1000 for i in range(rng.choice([100, 1100]))}
    else:
        spec["command"] = [rng.choice(["\ud800", "ok", "\udcff"])]
    return {**tree, "spec": spec}


MUTATIONS: tuple[Callable[[random.Random, Any, Callable[[random.Random], Any]], Any], ...] = (
    replace_field,
    replace_field,
    replace_field,
    drop_field,
    unknown_field,
    duplicate_key,
    os_limit,
)


def mutate(
    rng: random.Random, document: dict[str, Any], odd: Callable[[random.Random], Any] = odd_value
) -> Any:
    """One to three mutations of ``document``, each at a random field."""
    tree: Any = document
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        tree = rng.choice(MUTATIONS)(rng, tree, odd)
    return tree


# --- Rendering -------------------------------------------------------------------------------------------


def render(tree: Any, ascii_only: bool = True) -> str:
    """JSON text of a tree that may hold :class:`Raw` and :class:`Pairs`; NaN and infinities as Python writes them.

    With ``ascii_only`` False, characters are written as themselves, so a lone surrogate becomes bytes
    that are no UTF-8 at all once :func:`encode`d.
    """
    if isinstance(tree, Raw):
        return tree.text
    if isinstance(tree, Pairs | dict):
        pairs = tree.pairs if isinstance(tree, Pairs) else tree.items()
        inner = ",".join(
            f"{json.dumps(k, ensure_ascii=ascii_only)}:{render(v, ascii_only)}" for k, v in pairs
        )
        return "{" + inner + "}"
    if isinstance(tree, list):
        return "[" + ",".join(render(v, ascii_only) for v in tree) + "]"
    return json.dumps(tree, ensure_ascii=ascii_only)


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def mangle_bytes(rng: random.Random, payload: bytes) -> bytes:
    """Byte-level damage to a payload: truncated, a byte flipped, invalid UTF-8, a BOM, trailing junk."""
    if not payload:
        return b"\xff"
    case = rng.randrange(6)
    cut = rng.randrange(len(payload))
    if case == 0:
        return payload[:cut] or b"{"
    if case == 1:
        return payload[:cut] + bytes([payload[cut] ^ (1 << rng.randrange(8))]) + payload[cut + 1 :]
    if case == 2:
        return (
            payload[:cut]
            + rng.choice([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
            + payload[cut:]
        )
    if case == 3:
        return b"\xef\xbb\xbf" + payload
    if case == 4:
        return payload + rng.choice([b" x", b"{}", b"\x00", b"]"])
    return payload.replace(b'"', b"'", 1)


def raw_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([1, 2, 8, 64, 1024]))


def fuzz_payload(rng: random.Random, execution_id: str) -> bytes:
    """One payload for ``.../executions/<execution_id>/desired``: mostly mutated, some valid, some noise."""
    roll = rng.random()
    document = valid_document(rng, execution_id)
    if roll < 0.08:
        return json.dumps(document).encode()
    if roll < 0.16:
        return raw_bytes(rng)
    if roll < 0.26:
        return mangle_bytes(rng, json.dumps(document).encode())
    if roll < 0.30:
        return encode(render(odd_value(rng)))  # a JSON value that is not an object, or not JSON
    return encode(render(mutate(rng, document), ascii_only=rng.random() < 0.8))


def bad_topic_id(rng: random.Random) -> str:
    """An execution id that is no valid id but can still be published to (no '/', '+', '#', NUL)."""
    return rng.choice(
        [
            "x" * rng.choice([129, 300, 5000]),
            "has space",
            "dollar$",
            "\u202eevil",
            "zero\u200bwidth",
            "\u4e2d\u6587",
            "a:b",
            "a*b",
            "%2F",
            "\U0001f4a9",
            "",
        ]
    )


# --- Hypothesis strategies ---------------------------------------------------------------------------------


def odd_values() -> st.SearchStrategy[Any]:
    """Odd JSON values from hypothesis itself: any code point (surrogates too), any float, any int."""
    leaves = st.one_of(
        st.text(st.characters(codec=None), max_size=40),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.none(),
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )


def desired_payloads(execution_id: str) -> st.SearchStrategy[bytes]:
    """Payloads for one execution's desired topic: mutated documents, valid ones, and raw bytes."""

    def mutated_with(rng: random.Random, value: Any) -> bytes:
        odd = (lambda r: value) if rng.random() < 0.5 else odd_value
        return encode(render(mutate(rng, valid_document(rng, execution_id), odd)))

    randoms = st.randoms(use_true_random=False)
    return st.one_of(
        st.builds(mutated_with, randoms, odd_values()),
        st.builds(fuzz_payload, randoms, st.just(execution_id)),
        st.builds(lambda r: json.dumps(valid_document(r, execution_id)).encode(), randoms),
        st.binary(max_size=200),
    )


# --- Node control documents ({"generation", "cordoned"}, PROTOCOL.md Node control) ------------------------

CONTROL_FIELDS = ("generation", "cordoned")
# Every mutation but os_limit, which is about a desired document's spec.
CONTROL_MUTATIONS = tuple(m for m in MUTATIONS if m is not os_limit)


def valid_control(rng: random.Random) -> dict[str, Any]:
    return {"generation": rng.randint(1, 2**40), "cordoned": rng.random() < 0.5}


def control_payload(rng: random.Random, odd: Callable[[random.Random], Any] = odd_value) -> bytes:
    """One payload for ``P/nodes/N/control``: mostly mutated, some valid, some noise, some empty."""
    roll = rng.random()
    document = valid_control(rng)
    if roll < 0.1:
        return json.dumps(document).encode()
    if roll < 0.15:
        return b""
    if roll < 0.25:
        return raw_bytes(rng)
    if roll < 0.35:
        return mangle_bytes(rng, json.dumps(document).encode())
    if roll < 0.4:
        return encode(render(odd_value(rng)))
    tree: Any = document
    for _ in range(rng.choice([1, 1, 2, 3])):
        tree = rng.choice(CONTROL_MUTATIONS)(rng, tree, odd)
    return encode(render(tree, ascii_only=rng.random() < 0.8))


def control_payloads() -> st.SearchStrategy[bytes]:
    def mutated_with(rng: random.Random, value: Any) -> bytes:
        return control_payload(rng, (lambda r: value) if rng.random() < 0.5 else odd_value)

    randoms = st.randoms(use_true_random=False)
    return st.one_of(st.builds(mutated_with, randoms, odd_values()), st.builds(control_payload, randoms))


# --- Log requests (PROTOCOL.md, Logs on request) -----------------------------------------------------------

LOG_REQUEST_FIELDS = ("request_id", "execution_id", "stream", "tail_bytes", "follow", "follow_s")


def valid_log_request(rng: random.Random) -> dict[str, Any]:
    """A request the agent accepts: a cancel, or a tail with some of its optional fields."""
    if rng.random() < 0.15:
        return {"request_id": valid_id(rng, "r"), "cancel": True}
    request: dict[str, Any] = {"request_id": valid_id(rng, "r"), "execution_id": valid_id(rng, "e")}
    if rng.random() < 0.5:
        request["stream"] = rng.choice(["stdout", "stderr"])
    if rng.random() < 0.5:
        request["tail_bytes"] = rng.choice([0, 1, 65536, 1024 * 1024])
    if rng.random() < 0.5:
        request["follow"] = rng.random() < 0.5
    if rng.random() < 0.5:
        request["follow_s"] = rng.choice([0.5, 1, 300, 3600])
    return request


def out_of_bounds(rng: random.Random) -> dict[str, Any]:
    """A request with one value just outside what the contract allows."""
    request = valid_log_request(rng)
    field, value = rng.choice(
        [
            ("tail_bytes", -1),
            ("tail_bytes", 1024 * 1024 + 1),
            ("tail_bytes", 1.5),
            ("tail_bytes", True),
            ("follow_s", 3600.001),
            ("follow_s", 0),
            ("follow_s", -1),
            ("follow", 1),
            ("stream", "stdin"),
            ("request_id", "a/b"),
            ("request_id", ""),
            ("request_id", "x" * 129),
            ("request_id", 7),
            ("execution_id", "#"),
            ("cancel", False),
        ]
    )
    request[field] = value
    return request


def log_request_payload(rng: random.Random) -> bytes:
    """One payload for ``.../logs/request``: mostly mutated or out of bounds, some valid, some noise."""
    roll = rng.random()
    request = valid_log_request(rng)
    if roll < 0.1:
        return json.dumps(request).encode()
    if roll < 0.25:
        return json.dumps(out_of_bounds(rng)).encode()
    if roll < 0.33:
        return raw_bytes(rng)
    if roll < 0.43:
        return mangle_bytes(rng, json.dumps(request).encode())
    if roll < 0.47:
        return encode(render(odd_value(rng)))
    return encode(render(mutate(rng, request), ascii_only=rng.random() < 0.8))


def log_request_payloads() -> st.SearchStrategy[bytes]:
    """Payloads for a node's log request topic: mutated requests, valid ones, and raw bytes."""

    def mutated_with(rng: random.Random, value: Any) -> bytes:
        return encode(render(mutate(rng, valid_log_request(rng), lambda r: value)))

    randoms = st.randoms(use_true_random=False)
    return st.one_of(
        st.builds(mutated_with, randoms, odd_values()),
        st.builds(log_request_payload, randoms),
        st.binary(max_size=200),
    )
