"""scripts/python-env.sh (used by scripts/demo and scripts/test) picks a Python pip may install
into: a `.venv` for an "externally managed" system Python (PEP 668), reused while current; a
venv's Python as it is. Run against the real system Python where it is externally managed
(stock Debian 12 / Ubuntu 24.04); `python3 -m venv` really runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


def externally_managed(python: str) -> bool:
    code = (
        "import os, sys, sysconfig; sys.exit(0 if sys.prefix == sys.base_prefix and "
        "sys.version_info >= (3, 11) and os.path.exists(os.path.join("
        "sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')) else 1)"
    )
    try:
        return subprocess.run([python, "-c", code], capture_output=True).returncode == 0
    except OSError:
        return False


def choose(root: Path, python: str) -> subprocess.CompletedProcess[str]:
    script = (
        f"set -euo pipefail; root={root}; source {ROOT}/scripts/python-env.sh; "
        f'choose_python {python}; echo "PYTHON=$python"'
    )
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)


@pytest.mark.skipif(
    not externally_managed(SYSTEM_PYTHON),
    reason="/usr/bin/python3 is not an externally managed Python 3.11+ here",
)
def test_an_externally_managed_python_gets_a_reused_venv(tmp_path: Path) -> None:
    first = choose(tmp_path, SYSTEM_PYTHON)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"PYTHON={tmp_path}/.venv/bin/python"
    assert "externally managed (PEP 668): making a virtual environment" in first.stderr
    # pip works in it (that is the point) ...
    pip = subprocess.run(
        [f"{tmp_path}/.venv/bin/python", "-m", "pip", "--version"], capture_output=True, text=True
    )
    assert pip.returncode == 0 and str(tmp_path / ".venv") in pip.stdout
    # ... and the next run reuses it instead of making it again.
    marker = tmp_path / ".venv" / "kept"
    marker.write_text("")
    second = choose(tmp_path, SYSTEM_PYTHON)
    assert second.stdout.strip() == f"PYTHON={tmp_path}/.venv/bin/python"
    assert "using the virtual environment" in second.stderr
    assert marker.exists()
    # A broken .venv (its Python gone) is made again.
    (tmp_path / ".venv" / "bin" / "python").unlink()
    third = choose(tmp_path, SYSTEM_PYTHON)
    assert third.returncode == 0, third.stderr
    assert "making a virtual environment" in third.stderr
    assert not marker.exists()


def test_a_venv_python_is_used_as_it_is(tmp_path: Path) -> None:
    venv = tmp_path / "some-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    result = choose(checkout, python)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"PYTHON={python}"
    assert not (checkout / ".venv").exists()


def test_an_old_python_is_refused_by_name(tmp_path: Path) -> None:
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\nexit 1\n")  # what `python -c 'sys.exit(version < 3.11)'` says
    fake.chmod(0o755)
    result = choose(tmp_path, str(fake))
    assert result.returncode != 0
    assert "is not Python 3.11 or newer" in result.stderr
