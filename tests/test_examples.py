"""The CI examples validate against their published schemas, and set the key and the pin.

check-jsonschema (a test extra) ships vendored copies of SchemaStore's schemas for GitHub
workflows, GitLab CI and Azure Pipelines, so this runs offline. The Azure schema's patterns use
escapes that the default ECMAScript-style regex engine rejects: it is checked with Python's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import skip_or_fail

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCHEMAS = {
    "github-actions.yml": ("vendor.github-workflows", "default"),
    "gitlab-ci.yml": ("vendor.gitlab-ci", "default"),
    "azure-pipelines.yml": ("vendor.azure-pipelines", "python"),
}


def check_jsonschema() -> list[str]:
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        skip_or_fail("check-jsonschema is not installed: pip install -e '.[test]'")
    return [sys.executable, "-m", "check_jsonschema"]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_example_validates_against_its_schema(name):
    schema, regex = SCHEMAS[name]
    out = subprocess.run(
        [
            *check_jsonschema(),
            "--regex-variant",
            regex,
            "--builtin-schema",
            schema,
            str(EXAMPLES / name),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_checker_catches_what_the_azure_example_had(tmp_path):
    """Numbers where the Azure schema wants strings (the example's old fetchDepth) are refused."""
    bad = tmp_path / "azure-pipelines.yml"
    text = (EXAMPLES / "azure-pipelines.yml").read_text()
    bad.write_text(text.replace('fetchDepth: "0"', "fetchDepth: 0"))
    assert bad.read_text() != text
    out = subprocess.run(
        [
            *check_jsonschema(),
            "--regex-variant",
            "python",
            "--builtin-schema",
            "vendor.azure-pipelines",
            str(bad),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "fetchDepth" in out.stdout


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_example_maps_the_secret_key_and_the_plain_pin(name):
    text = (EXAMPLES / name).read_text()
    assert "SST_VAULT_KEY" in text
    assert "SST_VAULT_PIN" in text
    if name == "github-actions.yml":
        assert "SST_VAULT_KEY: ${{ secrets.SST_VAULT_KEY }}" in text
        assert "SST_VAULT_PIN: ${{ vars.SST_VAULT_PIN }}" in text  # a variable, not a secret
    if name == "azure-pipelines.yml":
        assert "SST_VAULT_KEY: $(SST_VAULT_KEY)" in text  # secrets reach steps only mapped
