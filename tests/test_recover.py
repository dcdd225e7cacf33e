"""DESIGN.md guarantee 6: the state can be recovered without sst-vault.

examples/recover.py follows only the format specification (the docstring of vault/envelope.py,
repeated in SECURITY.md) and imports nothing but the standard library and `cryptography`.
Here it runs with `vault` made unimportable, on files written by the real CLI, with the data
key taken out of data-key.age by the real `age -d`.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import VaultProject, make_project, needs
from helpers import deploy

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "recover.py"
TESTDATA = Path(__file__).parent / "testdata"
ALLOWED = {
    "argparse",
    "base64",
    "hashlib",
    "hmac",
    "json",
    "struct",
    "sys",
    "zlib",
    "pathlib",
    "__future__",
    "cryptography",
}
# Runs the script with `import vault` failing, so a stray import cannot hide behind the
# editable install of this project.
FERNET_VECTOR_KEY = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
BLOCKED = (
    "import runpy, sys; sys.modules['vault'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def recover(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        timeout=60,
    )


def test_script_imports_only_the_standard_library_and_cryptography():
    tree = ast.parse(SCRIPT.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert names <= ALLOWED, names - ALLOWED
    # "a short script": v1 and v2; v2's preset zlib dictionary is data (base64), not counted
    lines = SCRIPT.read_text().splitlines()
    data = [line for line in lines if re.fullmatch(r' {8}"[A-Za-z0-9+/=]+"', line)]
    assert len(lines) - len(data) < 200


def test_recovers_the_test_vectors():
    key = bytes(range(32)).hex()
    result = recover("--data-key-hex", key, str(TESTDATA / "vector-v1.vault"))
    assert result.returncode == 0, result.stderr
    assert b'"marker": "sst-vault test vector \xc3\xa9"' in result.stdout
    assert b'"serial": 7' in result.stderr
    result = recover(
        "--fernet-key",
        "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
        str(TESTDATA / "vector-v1-fernet.vault"),
    )
    assert result.returncode == 0 and b"sst-vault test vector" in result.stdout, result.stderr
    # Format v2: chunked, chunking off, the fernet backend's key, an empty file.
    for name, args in (
        ("vector-v2.vault", ("--data-key-hex", key)),
        ("vector-v2-chunks.vault", ("--data-key-hex", key)),
        ("vector-v2-fixed.vault", ("--data-key-hex", key)),
        ("vector-v2-empty.vault", ("--data-key-hex", key)),
        (
            "vector-v2-fernet.vault",
            ("--fernet-key", "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="),
        ),
    ):
        result = recover(*args, str(TESTDATA / name))
        assert result.returncode == 0, (name, result.stderr)
        if name != "vector-v2-empty.vault":
            assert b"sst-vault test vector" in result.stdout or b"urn:pulumi" in result.stdout
    for bad in (
        "fail_bad_tag.vault",
        "fail_bad_header.vault",
        "fail_truncated.vault",
        "fail_wrong_key.vault",
        "fail_not_vault.vault",
        "fail_newer_format.vault",
        "fail_v2_reordered.vault",
        "fail_v2_dropped.vault",
        "fail_v2_duplicated.vault",
        "fail_v2_spliced_version.vault",
        "fail_v2_spliced_file.vault",
        "fail_v2_trailing.vault",
        "fail_v2_header_size.vault",
        "fail_v2_truncated.vault",
    ):
        result = recover("--data-key-hex", key, str(TESTDATA / bad))
        assert result.returncode == 1 and result.stdout == b"", bad
        assert result.stderr.startswith(b"Error: ") and result.stderr.count(b"\n") == 1, bad


@needs("age")
def test_recovers_an_age_vault_with_the_real_age_cli(tmp_path):
    key_file = tmp_path / "ci.txt"
    subprocess.run(["age-keygen", "-o", str(key_file)], check=True, capture_output=True)
    project = make_project(tmp_path, key=key_file.read_text())
    deploy(project, "prod", "v1", secrets={"DB_PASSWORD": "secret-v1"})
    big = (
        b'{"version": 3, "checkpoint": {"resources": ['
        + b",".join(
            b'{"urn": "urn:pulumi:prod::demo-app::aws:s3:Bucket::b%d", "id": "%032x"}'
            % (i, i * 7919)
            for i in range(20_000)
        )
        + b"]}}\n"
    )
    project.state_file("app", "prod").write_bytes(big)  # about 1.7 MB: many chunks
    assert project.cli("commit", "prod").code == 0
    state_dir = project.root / "infra" / "state"

    # As the module docstring says: age -d, then the script, per file.
    data_key = tmp_path / "data-key.bin"
    subprocess.run(
        ["age", "-d", "-i", str(key_file), "-o", str(data_key), str(state_dir / "data-key.age")],
        check=True,
        capture_output=True,
    )
    hex_key = subprocess.run(
        f"age -d -i {key_file} {state_dir / 'data-key.age'} | xxd -p -c 64",
        shell=True,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert bytes.fromhex(hex_key) == data_key.read_bytes()
    for kind in ("passphrase", "app", "secret"):
        vault_file = str(state_dir / kind / "prod.json.vault")
        assert Path(vault_file).read_bytes()[8] == 2  # what commit writes: format v2
        expected = project.state_file(kind, "prod").read_bytes()
        out = tmp_path / f"{kind}.json"
        result = recover("--data-key-file", str(data_key), "-o", str(out), vault_file)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == expected
        result = recover("--data-key-hex", hex_key, vault_file)
        assert result.returncode == 0 and result.stdout == expected, result.stderr
    # The hex form in a file works too (what `xxd -p -c 64 > file` leaves).
    (tmp_path / "hex.txt").write_text(hex_key + "\n")
    result = recover(
        "--data-key-file", str(tmp_path / "hex.txt"), str(state_dir / "app" / "prod.json.vault")
    )
    assert result.returncode == 0 and result.stdout == big


def test_recovers_a_fernet_vault(tmp_path):
    project: VaultProject = make_project(tmp_path, backend="fernet")
    deploy(project, "prod", "v1", secrets={"DB_PASSWORD": "secret-v1"})
    assert project.cli("commit", "prod").code == 0
    for kind in ("passphrase", "app", "secret"):
        vault_file = str(project.vault_file(kind, "prod"))
        # The = form: a Fernet key is URL-safe base64 and may start with "-".
        result = recover(f"--fernet-key={project.key}", vault_file)
        assert result.returncode == 0, result.stderr
        assert result.stdout == project.state_file(kind, "prod").read_bytes()
    key_file = tmp_path / "fernet.key"
    key_file.write_text(f"# the vault's key\n{project.key}\n")
    result = recover("--fernet-key-file", str(key_file), str(project.vault_file("app", "prod")))
    assert result.returncode == 0, result.stderr
    assert result.stdout == project.state_file("app", "prod").read_bytes()
    other = make_project(tmp_path, name="other", backend="fernet").key
    result = recover(f"--fernet-key={other}", str(project.vault_file("app", "prod")))
    assert result.returncode == 1 and b"authentication failed" in result.stderr
    # A key that starts with "-" (one in 64 Fernet keys) is a key, not an option, in that form.
    dashed = "-" + project.key[1:]
    result = recover(f"--fernet-key={dashed}", str(project.vault_file("app", "prod")))
    assert b"Traceback" not in result.stderr, result.stderr
    assert b"expected one argument" not in result.stderr
    # Another key than the vault's (exit 1), unless the vault's own already starts with "-".
    assert result.returncode == (0 if dashed == project.key else 1), result.stderr
