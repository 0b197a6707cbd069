"""checkov in a venv of its own, built once from tests/scale/checkov.lock and kept in the user's cache.

checkov pins packaging<24 and networkx<2.7, which conflict with the project's locks, so it cannot join the dev
extra. The venv's directory is named after the lock's hash, so a re-pin builds a fresh one; a file lock keeps two
test runs from building the same venv at once, and a marker written last means a half-built venv (an interrupted
install) is rebuilt rather than used.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

LOCK_FILE = Path(__file__).with_name("checkov.lock")
COMPLETE_MARKER = ".installed"
INSTALL_TIMEOUT_S = 900


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alexnet-serve"


def checkov_executable() -> Path:
    """The `checkov` script of the venv for the current lock, building that venv first if needed."""
    digest = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:16]
    venv = cache_root() / f"checkov-{digest}"
    executable = venv / "bin" / "checkov"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f"{venv.name}.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (venv / COMPLETE_MARKER).exists():
            _build(venv)
    return executable


def _build(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(
        [*install, "--require-hashes", "--no-deps", "--requirement", str(LOCK_FILE)],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    (venv / COMPLETE_MARKER).touch()
