"""What exec and chdir refuse is found before anything is spawned, each problem naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from agent import exec_limits
from agent.exec_limits import EXEC_BYTES_MAX, MAX_ARG_STRLEN, NAME_MAX, PATH_MAX
from agent.protocol import Spec, spec_problems


def spec(**fields: Any) -> Spec:
    return Spec.model_validate({"command": ["sleep", "1"], **fields})


def test_a_plain_spec_has_no_problem() -> None:
    assert spec_problems(spec(env={"A": "1", "B": ""}, working_dir="/tmp")) == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a\0b", "NUL byte at offset 1"),
        ("\ud800", "lone surrogate"),
        ("x" * MAX_ARG_STRLEN, f"at most {MAX_ARG_STRLEN - 1}"),
    ],
)
def test_string_problems(text: str, words: str) -> None:
    problem = exec_limits.string_problem(text)
    assert problem is not None
    assert words in problem


def test_the_longest_argument_exec_takes_is_accepted() -> None:
    assert exec_limits.string_problem("x" * (MAX_ARG_STRLEN - 1)) is None
    # Bytes, not characters: a 3-byte character counts three times.
    assert exec_limits.string_problem("€" * (MAX_ARG_STRLEN // 3)) is None
    assert exec_limits.string_problem("€" * (MAX_ARG_STRLEN // 3 + 1)) is not None


def test_surrogate_escaped_bytes_are_what_python_passes_on_and_are_fine() -> None:
    assert exec_limits.string_problem("\udcff") is None  # os.fsdecode's way of carrying a 0xff byte


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"": "x"}, "spec.env: a variable name must not be empty"),
        ({"A=B": "x"}, "spec.env['A=B']: a variable name must not contain '='"),
        ({"A\0": "x"}, "spec.env['A\\x00']: the name contains a NUL byte"),
        ({"A": "x\0"}, "spec.env['A']: the value contains a NUL byte at offset 3"),
        ({"A": "x" * MAX_ARG_STRLEN}, "spec.env['A']: the value is"),
    ],
)
def test_env_problems_name_the_variable(env: dict[str, str], words: str) -> None:
    problems = spec_problems(spec(env=env))
    assert len(problems) == 1
    assert problems[0].startswith(words), problems


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("relative/dir", "must be an absolute path"),
        ("/" + "a/" * (PATH_MAX // 2), f"a path may be at most {PATH_MAX - 1}"),
        ("/" + "a" * (NAME_MAX + 1), f"at most {NAME_MAX} are allowed"),
        ("/tmp\0x", "NUL"),
    ],
)
def test_working_dir_problems(path: str, words: str) -> None:
    problems = spec_problems(spec(working_dir=path))
    assert len(problems) == 1
    assert problems[0].startswith("spec.working_dir: ")
    assert words in problems[0]


def test_the_longest_working_dir_is_accepted() -> None:
    longest = "/" + "/".join(["a" * NAME_MAX] * 16)
    longest = longest[: PATH_MAX - 1]
    assert exec_limits.working_dir_problem(longest) is None


def test_argv_and_environment_over_the_exec_budget_are_refused() -> None:
    chunk = "x" * (MAX_ARG_STRLEN - 1)
    count = EXEC_BYTES_MAX // MAX_ARG_STRLEN + 1
    problems = spec_problems(spec(command=["echo", *[chunk] * count]))
    assert len(problems) == 1
    assert problems[0].startswith("spec.command and spec.env: ")
    assert f"at most {EXEC_BYTES_MAX}" in problems[0]
    assert spec_problems(spec(command=["echo", *[chunk] * (count - 2)])) == []


def test_probe_fields_are_checked_too() -> None:
    problems = spec_problems(spec(probe={"exec": {"command": ["true", "\0"]}}))
    assert problems == ["spec.probe.exec.command[1]: contains a NUL byte at offset 0"]
    problems = spec_problems(spec(probe={"http": {"url": "http://x/\0"}}))
    assert problems == ["spec.probe.http.url: contains a NUL byte at offset 9"]
    problems = spec_problems(spec(probe={"tcp": {"host": "\0", "port": 1}}))
    assert problems == ["spec.probe.tcp.host: contains a NUL byte at offset 0"]


def test_every_problem_is_reported_at_once() -> None:
    problems = spec_problems(spec(command=["a\0"], env={"": "1", "B=": "2"}, working_dir="x"))
    assert [p.split(":")[0] for p in problems] == [
        "spec.command[0]",
        "spec.env",
        "spec.env['B=']",
        "spec.working_dir",
    ]
