"""Another version of the agent, installed from a git ref into a venv of its own, for upgrade tests.

Nothing is downloaded or built: the venv is made by this venv's Python and sees this venv's packages through a
``.pth`` line (``--system-site-packages`` would reach the base interpreter's, which lack the agent's
dependencies). A plain path line does not run that directory's own ``.pth`` files, so the editable
install of the current agent stays out of the old venv, and the old agent is what ``import agent`` finds.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def resolve(ref: str, repo: Path = REPO) -> str:
    """The commit a ref names, so a test can say which version it ran."""
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def install(ref: str, into: Path, repo: Path = REPO) -> Path:
    """Install the agent as of ``ref`` into ``into``/venv; returns that venv's python."""
    source = into / "src"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    venv = into / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "borrowed-packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # Copied rather than pip-installed: building a wheel offline needs the `wheel` package, which this
    # venv's setuptools (65) requires and the project does not install; the package is plain Python.
    shutil.copytree(source / "agent", site / "agent")
    return python


def agent_file(python: Path) -> str:
    """Where ``import agent`` leads in that venv (a test checks it is not the current tree)."""
    return subprocess.run(
        [str(python), "-c", "import agent; print(agent.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=python.parent,
    ).stdout.strip()
