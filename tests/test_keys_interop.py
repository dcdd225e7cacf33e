"""Keys through the CLI (real subprocesses): interop with the real `age`/`age-keygen`, every key
source and the one-line errors when a key is missing, malformed or wrong (DESIGN.md "Keys")."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import VaultProject, git, make_project, needs, new_key
from helpers import assert_refused, before, deploy, key_id, wipe_home, without_key

from vault import envelope
from vault.keys import key_id_of

pytestmark = needs("age", "age-keygen")


def age_keygen(folder: Path, name: str) -> tuple[Path, str, str]:
    """(key file, identity line, public key) from the real age-keygen."""
    path = folder / f"{name}.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    identity = next(ln for ln in path.read_text().splitlines() if ln.startswith("AGE-SECRET"))
    public = subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return path, identity, public


def prepare_fresh(project: VaultProject, env: dict[str, str], *stages: str) -> dict[str, bytes]:
    """Wipe the SST home, prepare, and return what landed there."""
    wipe_home(project)
    result = project.cli("prepare", *stages, env=env)
    assert result.code == 0, result.output
    return project.snapshot_home()


def header_key_id(project: VaultProject, kind: str, stage: str) -> str:
    with project.vault_file(kind, stage).open("rb") as handle:
        return envelope.read_header(handle, project.vault_file(kind, stage))[0].key_id


@pytest.fixture
def keygen_project(tmp_path: Path) -> tuple[VaultProject, Path, str]:
    """A vault whose SST_VAULT_KEY is a whole key file from the real age-keygen, with a stage."""
    key_file, _, public = age_keygen(tmp_path, "ci")
    project = make_project(tmp_path, key=key_file.read_text())
    deploy(project, "prod", "v1", secrets={"DB_PASSWORD": "secret-v1"})
    assert project.cli("commit", "prod").code == 0
    return project, key_file, public


# --- interop with the real age ------------------------------------------------------------


def test_age_keygen_identity_works_for_init_commit_prepare(keygen_project):
    project, key_file, public = keygen_project
    listing = project.cli("recipients", "list")
    assert listing.code == 0, listing.output
    assert [line.split()[1] for line in listing.out.splitlines()] == [public]
    committed = project.snapshot_home()
    assert set(committed) == {
        f"{k}/{project.app}/prod.json" for k in ("passphrase", "app", "secret")
    }
    # SST_VAULT_KEY holding the key file's text (comments included)...
    assert prepare_fresh(project, project.env, "prod") == committed
    # ...and SST_VAULT_KEY_FILE naming the file itself.
    by_file = dict(without_key(project.env), SST_VAULT_KEY_FILE=str(key_file))
    assert prepare_fresh(project, by_file, "prod") == committed
    assert key_id(project, by_file) == key_id(project)


def test_real_age_opens_the_wrapped_data_key(keygen_project):
    project, key_file, _ = keygen_project
    data_key_file = project.root / "infra" / "state" / "data-key.age"
    assert data_key_file.read_bytes().startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n")
    data_key = subprocess.run(
        ["age", "-d", "-i", str(key_file), str(data_key_file)], check=True, capture_output=True
    ).stdout
    assert len(data_key) == 32
    assert key_id_of(data_key) == key_id(project) == header_key_id(project, "app", "prod")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"\n\n  \t\n" + b + b"\n \n\n",
        lambda b: b.rstrip(b"\n"),
        lambda b: b.replace(b"\n", b"\r\n") + b"\r\n",
    ],
    ids=["surrounding-whitespace", "no-final-newline", "crlf"],
)
def test_whitespace_around_the_armored_data_key_is_tolerated(keygen_project, mangle):
    """The age spec allows whitespace around armor (pyrage alone rejects it)."""
    project, _, _ = keygen_project
    committed = project.snapshot_home()
    real_id = key_id(project)
    data_key_file = project.root / "infra" / "state" / "data-key.age"
    data_key_file.write_bytes(mangle(data_key_file.read_bytes()))
    assert prepare_fresh(project, project.env, "prod") == committed
    assert key_id(project) == real_id


# --- one-line errors for unusable keys ----------------------------------------------------

PQ_IDENTITY = "AGE-SECRET-KEY-PQ-1" + "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L" * 4


def refusals_for_bad_keys(project: VaultProject, tmp_path: Path, identity: str):
    """(name, environment, words the one error line must contain) for each unusable key."""
    empty_file = tmp_path / "empty.key"
    empty_file.write_text("# nothing here\n\n")
    pq_file = tmp_path / "pq.key"
    pq_file.write_text(f"# created: 2026-01-01\n{PQ_IDENTITY}\n")
    binary_file = tmp_path / "data-key.bin"  # the raw data key, not an identity
    binary_file.write_bytes(bytes(range(128, 160)))
    missing = tmp_path / "no-such.key"
    bare = without_key(project.env)
    return [
        ("pq", dict(bare, SST_VAULT_KEY=PQ_IDENTITY), ["$SST_VAULT_KEY", "post-quantum"]),
        ("pq-file", dict(bare, SST_VAULT_KEY_FILE=str(pq_file)), [str(pq_file), "post-quantum"]),
        ("pq-lowercase", dict(bare, SST_VAULT_KEY=PQ_IDENTITY.lower()), ["post-quantum"]),
        ("truncated", dict(bare, SST_VAULT_KEY=identity[:-6]), ["$SST_VAULT_KEY", "malformed"]),
        (
            "bad-checksum",
            dict(bare, SST_VAULT_KEY=identity[:-1] + ("Q" if identity[-1] != "Q" else "P")),
            ["$SST_VAULT_KEY", "malformed"],
        ),
        ("garbage", dict(bare, SST_VAULT_KEY="hunter2"), ["$SST_VAULT_KEY", "age identity"]),
        ("second-line-bad", dict(bare, SST_VAULT_KEY=f"{identity}\nnot-a-key"), ["$SST_VAULT_KEY"]),
        ("empty", dict(bare, SST_VAULT_KEY=""), ["$SST_VAULT_KEY", "empty"]),
        ("blank", dict(bare, SST_VAULT_KEY=" \n\t\n"), ["$SST_VAULT_KEY"]),
        (
            "missing-file",
            dict(bare, SST_VAULT_KEY_FILE=str(missing)),
            ["$SST_VAULT_KEY_FILE", str(missing), "cannot be read"],
        ),
        (
            "directory",
            dict(bare, SST_VAULT_KEY_FILE=str(tmp_path)),
            ["$SST_VAULT_KEY_FILE", "cannot be read"],
        ),
        ("empty-file", dict(bare, SST_VAULT_KEY_FILE=str(empty_file)), [str(empty_file), "empty"]),
        (
            "binary-file",
            dict(bare, SST_VAULT_KEY_FILE=str(binary_file)),
            ["$SST_VAULT_KEY_FILE", "binary"],
        ),
        (
            "fernet-for-age",
            dict(bare, SST_VAULT_KEY=new_key(bare, "fernet")),
            ["$SST_VAULT_KEY", "fernet", "age"],
        ),
    ]


def test_unusable_keys_are_one_line_usage_errors_and_write_nothing(keygen_project, tmp_path):
    project, _, _ = keygen_project
    identity = next(ln for ln in project.key.splitlines() if ln.startswith("AGE-SECRET"))
    # Uncommitted home changes: a commit would write the repo.
    deploy(project, "prod", "v2", secrets={"DB_PASSWORD": "secret-v2"})
    was = before(project)
    # Every command finds its key the same way (Project.keys): all variants go through
    # prepare, a few also through commit (the repo side) and `key id`.
    for name, env, words in refusals_for_bad_keys(project, tmp_path, identity):
        commands = [("prepare", "prod")]
        if name in ("pq", "empty", "missing-file", "garbage"):
            commands += [("commit", "prod"), ("key", "id")]
        for command in commands:
            result = project.cli(*command, env=env)
            line = assert_refused(result, 2, *words, project=project, was=was)
            secret = env.get("SST_VAULT_KEY", "").strip()
            assert not secret or secret not in line, f"{name}: the key was printed"
            assert identity not in result.output, name


def test_unusable_key_at_init_writes_nothing(tmp_path, env):
    root = tmp_path / "fresh"
    root.mkdir()
    git("init", "-q", cwd=root, env=env)
    for bad in (PQ_IDENTITY, "AGE-SECRET-KEY-1QQQ", ""):
        result = _run_init(root, dict(env, SST_VAULT_KEY=bad))
        assert result.code == 2, result.output
        assert result.err.startswith("Error: ") and result.err.count("\n") == 1, result.err
        assert "$SST_VAULT_KEY" in result.err and "Traceback" not in result.output
        assert sorted(p.name for p in root.iterdir()) == [".git"]


def _run_init(root: Path, env: dict[str, str]):
    from conftest import run_cli

    return run_cli("init", "--no-keyring", "--app", "demo-app", cwd=root, env=env)


def test_no_key_and_no_keyring_names_the_variable_and_a_backend(keygen_project, tmp_path):
    project, _, _ = keygen_project
    bare = without_key(project.env)
    assert bare["PYTHON_KEYRING_BACKEND"] == "keyring.backends.fail.Keyring"
    was = before(project)
    for command in (("prepare", "prod"), ("commit", "prod"), ("status",), ("key", "id")):
        line = assert_refused(
            project.cli(*command, env=bare), 2, "SST_VAULT_KEY", "keyring", project=project, was=was
        )
        assert "gnome-keyring" in line or "keyrings.alt" in line, line
    # init without any key wants the keyring, and says what to install before writing a file.
    root = tmp_path / "fresh"
    root.mkdir()
    git("init", "-q", cwd=root, env=bare)
    from conftest import run_cli

    result = run_cli("init", "--app", "demo-app", cwd=root, env=bare)
    assert result.code == 2 and result.err.count("\n") == 1, result.output
    assert "SST_VAULT_KEY" in result.err and "keyring" in result.err
    assert sorted(p.name for p in root.iterdir()) == [".git"]
    result = _run_init(root, bare)
    assert result.code == 2 and "SST_VAULT_KEY" in result.err, result.output


# --- several keys and the wrong key -------------------------------------------------------


def test_fernet_rotation_newest_first(tmp_path):
    project = make_project(tmp_path, backend="fernet")
    old = project.key
    deploy(project, "prod", "v1", secrets={"DB_PASSWORD": "secret-v1"})
    deploy(project, "staging", "v1", secrets={"DB_PASSWORD": "secret-v1"})
    assert project.cli("commit", "prod", "staging").code == 0
    old_id = key_id(project)
    new = new_key(project.env, "fernet")
    rotating = dict(project.env, SST_VAULT_KEY=f"{new}\n{old}\n")
    new_id = key_id(project, rotating)
    assert new_id != old_id

    # Old files still open while both keys are given...
    committed = project.snapshot_home()
    assert prepare_fresh(project, rotating, "prod", "staging") == committed
    # ...and what is sealed now is sealed under the first (newest) key.
    deploy(project, "prod", "v2", secrets={"DB_PASSWORD": "secret-v2"})
    result = project.cli("commit", "prod", env=rotating)
    assert result.code == 0, result.output
    assert {header_key_id(project, k, "prod") for k in ("passphrase", "app", "secret")} == {new_id}
    assert header_key_id(project, "app", "staging") == old_id
    home = project.snapshot_home()

    only_new = dict(project.env, SST_VAULT_KEY=new)
    prod = {k: v for k, v in home.items() if "/prod.json" in k}
    assert prepare_fresh(project, only_new, "prod") == prod
    # The new key alone cannot open what only the old key sealed: wrong key, exit 1.
    wipe_home(project)
    was = before(project)
    only_old = dict(project.env, SST_VAULT_KEY=old)
    assert_refused(
        project.cli("prepare", "staging", env=only_new),
        1,
        "wrong key",
        "staging.json.vault",
        old_id,
        project=project,
        was=was,
    )
    assert_refused(
        project.cli("prepare", "prod", env=only_old),
        1,
        "wrong key",
        new_id,
        project=project,
        was=was,
    )


def test_several_age_identities_any_order(keygen_project, tmp_path):
    project, _, _ = keygen_project
    _, other, _ = age_keygen(tmp_path, "other")
    committed = project.snapshot_home()
    for text in (f"{other}\n{project.key}", f"{project.key}\n\n{other}\n"):
        assert prepare_fresh(project, dict(project.env, SST_VAULT_KEY=text), "prod") == committed


def test_wrong_age_identity_is_refused(keygen_project, tmp_path):
    project, _, _ = keygen_project
    _, other, _ = age_keygen(tmp_path, "stranger")
    wrong = dict(project.env, SST_VAULT_KEY=other)
    # The home differs from the repo: nothing may overwrite it.
    deploy(project, "prod", "v2", secrets={"DB_PASSWORD": "secret-v2"})
    was = before(project)
    for command in (
        ("prepare", "prod"),
        ("prepare", "prod", "--force"),
        ("commit", "prod"),
        ("key", "id"),
    ):
        line = assert_refused(
            project.cli(*command, env=wrong),
            1,
            "wrong key",
            "data-key.age",
            project=project,
            was=was,
        )
        assert other not in line
    # From a key file too.
    key_file = tmp_path / "stranger.txt"
    wrong_file = dict(without_key(project.env), SST_VAULT_KEY_FILE=str(key_file))
    assert_refused(
        project.cli("prepare", "prod", env=wrong_file), 1, "wrong key", project=project, was=was
    )


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b"",
        lambda b: b[: len(b) // 2],
        lambda b: b.replace(b"-----END AGE ENCRYPTED FILE-----", b""),
        lambda b: b"age-encryption.org/v1\n",
        lambda b: bytes(range(256)),
    ],
    ids=["empty", "half", "no-end-line", "bare-age-header", "binary"],
)
def test_damaged_data_key_file_is_a_one_line_refusal(keygen_project, damage):
    project, _, _ = keygen_project
    data_key_file = project.root / "infra" / "state" / "data-key.age"
    data_key_file.write_bytes(damage(data_key_file.read_bytes()))
    was = before(project)
    for command in (("prepare", "prod"), ("commit", "prod")):
        assert_refused(
            project.cli(*command),
            1,
            "tampered",
            "data-key.age",
            "restore it",
            project=project,
            was=was,
        )
