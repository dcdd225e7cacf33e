"""Release hygiene: one version, written once, and everything naming a release agrees with it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import vault

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_written_once_and_reported():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["hatch"]["version"]["path"] == "vault/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+", vault.__version__)
    # The installed metadata was built from the same line (a stale editable install fails here).
    assert metadata.version("sst-vault") == vault.__version__
    out = subprocess.run(
        [sys.executable, "-m", "vault", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"sst-vault {vault.__version__}"


def test_package_init_imports_nothing():
    tree = ast.parse((ROOT / "vault" / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def test_license_is_mit_like_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text


def test_changelog_has_the_current_version_and_the_procedure():
    text = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", text, re.M)
    assert releases and releases[0] == vault.__version__
    assert "git tag -a vX.Y.Z" in text


def test_every_pinned_tag_is_the_current_version():
    """The README and every CI example install (or hook) exactly this release's tag."""
    files = [ROOT / "README.md", *sorted((ROOT / "examples").glob("*.yml"))]
    for path in files:
        text = path.read_text()
        assert "pip install sst-vault" not in text, f"{path.name}: sst-vault is not on PyPI"
        tags = set(re.findall(r"sst-vault@v(\d+\.\d+\.\d+)", text))
        tags |= set(re.findall(r"^\s*rev: v(\d+\.\d+\.\d+)", text, re.M))
        if path.parent.name == "examples":
            assert tags, f"{path.name} installs no pinned version"
        assert tags <= {vault.__version__}, f"{path.name} pins {tags}"
