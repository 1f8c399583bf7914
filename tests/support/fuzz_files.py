"""Files nobody here would write: configuration files and ``apply`` files, mutated and damaged.

Like tests/support/fuzz.py (whose mutations of a JSON tree these reuse), plain functions of a
``random.Random``, so hypothesis can replay and shrink them. A file is rendered as YAML (block style when
it can be, with YAML's own traps: tabs, anchors and aliases, tags, non-string and duplicate keys, deep
nesting) or as JSON, then maybe damaged byte by byte.
"""

from __future__ import annotations

import random
from typing import Any

import yaml
from hypothesis import strategies as st

from tests.support import fuzz

# --- Valid configuration --------------------------------------------------------------------------------


def valid_config(rng: random.Random) -> dict[str, Any]:
    config: dict[str, Any] = {"node_id": fuzz.valid_id(rng, "n")}
    if rng.random() < 0.5:
        config["state_dir"] = rng.choice(["/tmp/reconcile-fuzz", "/var/tmp/x", "relative/state"])
    if rng.random() < 0.7:
        config["mqtt"] = {
            "host": rng.choice(["127.0.0.1", "broker.example", "::1"]),
            "port": rng.randint(1, 65535),
            "keepalive_s": rng.randint(5, 3600),
            "topic_prefix": rng.choice(["reconcile/v1", "a/b", "x"]),
        }
        if rng.random() < 0.3:
            config["mqtt"]["tls"] = {"ca_file": "/etc/ssl/certs/ca-certificates.crt", "required": True}
    if rng.random() < 0.5:
        config["limits"] = {
            "max_payload_bytes": rng.randint(1024, 1 << 20),
            "max_executions": rng.randint(1, 5000),
        }
    if rng.random() < 0.4:
        config["labels"] = {f"zone{i}": fuzz.valid_id(rng, "z") for i in range(rng.randint(0, 4))}
    if rng.random() < 0.4:
        config["workload_logs"] = {"max_bytes": rng.randint(4096, 1 << 24), "keep": rng.randint(0, 10)}
    if rng.random() < 0.3:
        config["log"] = {"format": rng.choice(["json", "console", "auto"]), "level": "info"}
    if rng.random() < 0.2:
        config["metrics"] = {"address": rng.choice(["127.0.0.1:9100", ":0", None])}
    return config


# --- YAML's own traps ----------------------------------------------------------------------------------

YAML_SNIPPETS = (
    "\t",  # a tab where indentation goes
    "&a [1, 2]\nb: *a\n",
    "*undefined\n",
    "!!python/object/apply:os.system ['true']\n",  # SafeLoader refuses it: must be a message
    "!!binary AAAA\n",
    "? [1, 2]\n: complex key\n",
    "1: one\n",
    "true: yes\n",
    "null: ~\n",
    "<<: {a: 1}\n",
    "%YAML 1.1\n---\n",
    "---\n...\n---\n",
    "'unterminated\n",
    "\ufeff",
    "\x00",
    "\x85",  # NEL: a line break to YAML, not to Python's splitlines
    "\u2028",
    'key: "\\0"\n',  # a NUL byte written as an escape
    "when: 2024-13-45\n",  # a date PyYAML's constructor raises a bare ValueError for
    "n: " + "9" * 4301 + "\n",  # past Python's int-from-text limit: a ValueError too
)


def laughs(rng: random.Random) -> str:
    """Aliases each of which repeats the one before: tiny text, enormous once walked."""
    levels, width = rng.choice([(3, 3), (6, 9), (9, 9), (12, 4)])
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    key = rng.choice(["labels", "node_id", "spec", "mqtt"])
    return "\n".join(lines) + f"\n{key}: *l{levels - 1}\n"


def deep_yaml(rng: random.Random) -> str:
    depth = rng.choice([10, 63, 64, 65, 200, 1_000, 20_000])
    if rng.random() < 0.5:
        return "a: " + "[" * depth + "]" * depth + "\n"
    return "".join(" " * i + "k:\n" for i in range(min(depth, 3_000))) + " " * min(depth, 3_000) + "v\n"


def render_yaml(rng: random.Random, tree: Any) -> str:
    """YAML of ``tree``: block style when PyYAML can write it, the JSON rendering (valid YAML) else."""
    try:
        return yaml.safe_dump(tree, allow_unicode=rng.random() < 0.5, default_flow_style=rng.random() < 0.3)
    except (yaml.YAMLError, TypeError, ValueError, RecursionError):
        return fuzz.render(tree, ascii_only=rng.random() < 0.8)


def damage_text(rng: random.Random, text: str) -> str:
    """A YAML trap put into the text at a line start, or the text cut short."""
    lines = text.splitlines(keepends=True) or [""]
    at = rng.randrange(len(lines) + 1)
    if rng.random() < 0.15:
        return text[: rng.randrange(len(text) + 1)]
    return "".join(lines[:at]) + rng.choice(YAML_SNIPPETS) + "".join(lines[at:])


def text_file(rng: random.Random, document: Any, mutate: bool = True) -> bytes:
    """One file holding ``document``: mutated, rendered as YAML or JSON, maybe damaged."""
    roll = rng.random()
    if roll < 0.05:
        return fuzz.raw_bytes(rng)
    if roll < 0.1:
        return fuzz.encode(laughs(rng))
    if roll < 0.15:
        return fuzz.encode(deep_yaml(rng))
    tree = fuzz.mutate(rng, document) if mutate and rng.random() < 0.8 else document
    text = render_yaml(rng, tree) if rng.random() < 0.8 else fuzz.render(tree)
    if rng.random() < 0.3:
        text = damage_text(rng, text)
    data = fuzz.encode(text)
    return fuzz.mangle_bytes(rng, data) if rng.random() < 0.1 else data


def config_file(rng: random.Random) -> bytes:
    return text_file(rng, valid_config(rng))


# --- apply files -----------------------------------------------------------------------------------------


def apply_document(rng: random.Random) -> dict[str, Any]:
    document = fuzz.valid_document(rng, fuzz.valid_id(rng))
    document.pop("generation", None)  # apply sets it
    return {"node_id": fuzz.valid_id(rng, "n"), **document}


def apply_file(rng: random.Random) -> tuple[str, bytes]:
    """A file for ``reconcile-agent apply``: its suffix and its bytes (one document, a list, or a stream)."""
    suffix = rng.choice([".yaml", ".yaml", ".json", ".txt"])
    count = rng.choice([1, 1, 2, 5])
    documents = [apply_document(rng) for _ in range(count)]
    if suffix == ".json":
        tree: Any = documents[0] if count == 1 else documents
        tree = fuzz.mutate(rng, tree) if rng.random() < 0.7 and isinstance(tree, dict) else tree
        data = fuzz.encode(fuzz.render(tree, ascii_only=rng.random() < 0.8))
        if rng.random() < 0.2:
            data = fuzz.mangle_bytes(rng, data)
        if rng.random() < 0.05:
            data = b"[" * 100_000 + b"]" * 100_000
        return suffix, data
    if rng.random() < 0.5:
        return suffix, b"---\n".join(text_file(rng, d) for d in documents)
    return suffix, text_file(rng, documents if count > 1 else documents[0])


# --- Hypothesis strategies ---------------------------------------------------------------------------------


def config_files() -> st.SearchStrategy[bytes]:
    randoms = st.randoms(use_true_random=False)
    return st.one_of(
        st.builds(config_file, randoms),
        st.builds(lambda r: fuzz.encode(yaml.safe_dump(valid_config(r))), randoms),
        st.binary(max_size=300),
        st.text(max_size=300).map(fuzz.encode),
    )


def apply_files() -> st.SearchStrategy[tuple[str, bytes]]:
    randoms = st.randoms(use_true_random=False)
    return st.one_of(
        st.builds(apply_file, randoms),
        st.builds(lambda r: (".yaml", fuzz.encode(yaml.safe_dump(apply_document(r)))), randoms),
        st.tuples(st.sampled_from([".yaml", ".json"]), st.binary(max_size=300)),
    )
