"""Does the venv (installed from requirements/dev.lock) satisfy what pyproject.toml asks for?

scripts/_venv.sh installs the lock, then the project with --no-deps, so nothing would notice a
dependency added to pyproject.toml but not yet to the lock: this does, walking the project's
requirements (with its dev extra) and the extras they name, against what is installed.
Exit 0 if all are met; else 1, naming each requirement that is not.

    .venv/bin/python scripts/lock_covers.py
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "reconcile-agent"
EXTRAS = ("dev",)


def unmet(name: str, extras: tuple[str, ...], seen: set[tuple[str, str]]) -> list[str]:
    """What ``name`` (with ``extras``) requires that is missing or outside its range, recursively."""
    problems = []
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        wanted = [
            e
            for e in ("", *extras)
            if requirement.marker is None or requirement.marker.evaluate({"extra": e})
        ]
        if not wanted:
            continue
        key = canonicalize_name(requirement.name)
        try:
            version = metadata.version(key)
        except metadata.PackageNotFoundError:
            problems.append(f"{requirement} (needed by {name}): not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement} (needed by {name}): {version} installed")
            continue
        for extra in sorted(requirement.extras):
            if (key, extra) not in seen:
                seen.add((key, extra))
                problems += unmet(key, (extra,), seen)
    return problems


def main() -> int:
    problems = unmet(PROJECT, EXTRAS, set())
    for problem in problems:
        print(f"lock_covers: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
