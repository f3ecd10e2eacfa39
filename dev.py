#!/usr/bin/env python3
"""Set everything up, then run the demo or the tests — the README's two commands.

    python3 dev.py demo   # venv + runtime deps, then the demo store end to end, served on :8080
    python3 dev.py test   # venv + test deps, then the whole test suite

Needs only Python 3.11 and pip. Creates `.venv/` beside this file and reinstalls
only when a requirements file changes. Extra arguments go to the demo or to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
REQUIREMENTS = {"demo": "requirements.txt", "test": "requirements-dev.txt"}


def ensure_environment(requirements: str) -> None:
    if sys.version_info[:2] < (3, 11):
        raise SystemExit(f"Python 3.11 or newer is required, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    files = [ROOT / "requirements.txt", ROOT / requirements]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    stamp = VENV / f".installed-{Path(requirements).stem}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing {requirements} into {VENV}", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(ROOT / requirements)], check=True)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in REQUIREMENTS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, extra = argv[0], argv[1:]
    ensure_environment(REQUIREMENTS[command])
    module = ["-m", "demo"] if command == "demo" else ["-m", "pytest"]
    os.chdir(ROOT)
    child = subprocess.Popen([str(PYTHON), *module, *extra])
    try:
        return child.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the child too: it stops the demo's server and ends on its own
        return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
