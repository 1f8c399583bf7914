"""What the kernel refuses at exec time, checked when a desired document arrives instead of at spawn.

A spec that passes validation but that ``execve``/``chdir`` then refuse (a NUL byte, an env name with
``=``, an overlong path or argument) used to fail inside the spawn, long after the document was accepted.
Checking here turns it into a rejection that names the field, before anything is spawned.

Pure functions of strings: no system calls, so the lifecycle core may use them. The numbers are
Linux's (``getconf PATH_MAX /``, ``NAME_MAX``, ``MAX_ARG_STRLEN`` in ``linux/binfmts.h``); the total is
kept well under ``ARG_MAX`` (2 MiB under the default 8 MiB stack limit) because the supervisor adds its
own arguments and the inherited environment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

PATH_MAX = 4096  # bytes of a path, with its terminating NUL
NAME_MAX = 255  # bytes of one path component
MAX_ARG_STRLEN = 32 * 4096  # bytes of one argument or one NAME=value string, with its NUL
EXEC_BYTES_MAX = 1024 * 1024  # argv + environment, strings and pointers: half of the default ARG_MAX
_POINTER = 8


def _encoded(text: str) -> bytes | None:
    """``text`` as the bytes exec gets (UTF-8, as Python encodes file system strings), or None."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


def string_problem(text: str) -> str | None:
    """Why ``text`` cannot be one argument, name or value handed to exec, or None."""
    data = _encoded(text)
    if data is None:
        return "contains a lone surrogate, which has no byte encoding"
    nul = data.find(b"\0")
    if nul >= 0:
        return f"contains a NUL byte at offset {nul}"
    if len(data) + 1 > MAX_ARG_STRLEN:
        return f"is {len(data)} bytes; one argument may be at most {MAX_ARG_STRLEN - 1}"
    return None


def argv_problems(path: str, argv: Iterable[str]) -> list[str]:
    return [f"{path}[{i}]: {p}" for i, arg in enumerate(argv) if (p := string_problem(arg)) is not None]


def env_problems(path: str, env: Mapping[str, str]) -> list[str]:
    problems = []
    for name, value in env.items():
        where = f"{path}[{name!r}]"
        if not name:
            problems.append(f"{path}: a variable name must not be empty")
        elif "=" in name:
            problems.append(f"{where}: a variable name must not contain '='")
        elif (p := string_problem(name)) is not None:
            problems.append(f"{where}: the name {p}")
        elif (p := string_problem(f"{name}={value}")) is not None:
            problems.append(f"{where}: the value {p}")
    return problems


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file for the OS (a NUL byte, too long, a component too long), or None."""
    problem = string_problem(path)
    if problem is not None:
        return problem
    data = path.encode("utf-8", "surrogateescape")
    if len(data) + 1 > PATH_MAX:
        return f"is {len(data)} bytes; a path may be at most {PATH_MAX - 1}"
    long = next((c for c in data.split(b"/") if len(c) > NAME_MAX), None)
    if long is not None:
        return f"has a component of {len(long)} bytes; at most {NAME_MAX} are allowed"
    return None


def working_dir_problem(path: str) -> str | None:
    problem = path_problem(path)
    if problem is None and not path.startswith("/"):
        return "must be an absolute path"
    return problem


def exec_size(argv: Iterable[str], env: Mapping[str, str]) -> int:
    """Bytes exec needs for ``argv`` and ``env``: each string with its NUL, and a pointer to it."""
    strings = [*argv, *(f"{k}={v}" for k, v in env.items())]
    return sum(len(_encoded(s) or b"") + 1 + _POINTER for s in strings)
