"""The one git layer (vault/gitstore.py's runner), seen from outside through the real CLI.

Every git process sst-vault starts gets one environment: no `SST_VAULT_KEY*` variable, no
terminal prompt, a fallback identity where git has none. Every git command that fails becomes
one `Error:` line naming the command and git's own reason. A wrapper named `git` first on PATH
records what each git child really sees (what git's hooks see is checked by
`test_trust_attacks.test_plain_commit_hooks_get_no_key_variable`).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import VaultProject, git
from helpers import (
    add_remote,
    assert_refused,
    before,
    committed_prod,  # noqa: F401 (a fixture)
    copied_vault_project,  # noqa: F401 (a fixture)
    deploy,
    key_id,
    wipe_home,
)

from vault.errors import ConfigError, GitError
from vault.gitstore import GitNotFoundError, GitStore, shared_ancestors


def spy_on_git(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, str], Path]:
    """`env` with a `git` first on PATH that records each call's arguments and environment
    (`env -0`, so values with newlines stay whole) in a folder, then runs the real git."""
    real = shutil.which("git", path=env["PATH"])
    assert real is not None
    folder, calls = tmp_path / "git-spy", tmp_path / "git-calls"
    folder.mkdir()
    calls.mkdir()
    spy = folder / "git"
    spy.write_text(
        "#!/bin/sh\n"
        f"f=$(mktemp {shlex.quote(str(calls))}/call.XXXXXX)\n"
        'printf "%s\\n" "$*" > "$f.args"\n'
        'env -0 > "$f"\n'
        f'exec {shlex.quote(real)} "$@"\n'
    )
    spy.chmod(0o755)
    return dict(env, PATH=f"{folder}:{env['PATH']}"), calls


def recorded(calls: Path) -> list[tuple[str, dict[str, str]]]:
    """Each recorded git call (its arguments, its environment), and empty the folder."""
    found = []
    for args_file in sorted(calls.glob("*.args")):
        environ = Path(str(args_file).removesuffix(".args"))
        pairs = (item.partition("=") for item in environ.read_text().split("\0") if item)
        found.append((args_file.read_text().strip(), {k: v for k, _, v in pairs}))
        args_file.unlink()
        environ.unlink()
    return found


def test_every_git_child_gets_no_key_variable_and_no_prompt(
    committed: VaultProject, tmp_path: Path
):
    """`commit --push`, `prepare` and `log` with SST_VAULT_KEY, SST_VAULT_KEY_FILE and the
    exact-key pin SST_VAULT_KEY_ID set, and GIT_TERMINAL_PROMPT=1 (a user's own setting): no
    git child sees any SST_VAULT_KEY* variable, and every one has GIT_TERMINAL_PROMPT=0.

    SST_VAULT_KEY_ID stays in sst-vault's own environment (it is not secret), so its absence
    here is the runner's policy, not only the CLI taking the key out at start."""
    p = committed
    add_remote(p, tmp_path)
    key_file = tmp_path / "key.txt"
    key_file.write_text(p.key + "\n")
    env, calls = spy_on_git(tmp_path, p.env)
    env.update(
        SST_VAULT_KEY_ID=key_id(p), SST_VAULT_KEY_FILE=str(key_file), GIT_TERMINAL_PROMPT="1"
    )
    deploy(p, "prod", "v2")
    commands = (("commit", "prod", "--push"), ("prepare", "prod", "--force"), ("log", "prod"))
    seen: dict[str, list[str]] = {}
    for command in commands:
        if command[0] == "prepare":
            wipe_home(p)
        result = p.cli(*command, env=env)
        assert result.code == 0, (command, result.output)
        for args, child in recorded(calls):
            seen.setdefault(command[0], []).append(args)
            leaked = sorted(k for k in child if k.startswith("SST_VAULT_KEY"))
            assert leaked == [], (command, args, leaked)
            assert p.key not in "\0".join(child.values()), (command, args)
            assert child.get("GIT_TERMINAL_PROMPT") == "0", (command, args)
    # Each command did run git (else the checks above proved nothing), the push included.
    assert set(seen) == {"commit", "prepare", "log"}, seen
    verbs = [re.sub(r"^(-c \S+ )*", "", args) for args in seen["commit"]]
    assert any(verb.startswith("push ") for verb in verbs), seen["commit"]
    assert git("rev-parse", "main", cwd=tmp_path / "remote.git", env=p.env) == p.git(
        "rev-parse", "HEAD"
    )


def test_commits_get_a_fallback_identity_where_git_has_none(vault_project: VaultProject):
    """A bare CI runner has no user.name/user.email: the commit is still made, by
    `sst-vault <sst-vault@localhost>`; a configured identity is used as it is."""
    p = vault_project
    config = Path(p.env["GIT_CONFIG_GLOBAL"])
    configured = config.read_text()
    config.write_text("[init]\n\tdefaultBranch = main\n")  # no [user]
    deploy(p, "prod", "v1")
    result = p.cli("commit", "prod")
    assert result.code == 0, result.output
    assert p.git("log", "-1", "--format=%an <%ae> / %cn <%ce>").strip() == (
        "sst-vault <sst-vault@localhost> / sst-vault <sst-vault@localhost>"
    )
    config.write_text(configured)
    deploy(p, "prod", "v2")
    assert p.cli("commit", "prod").code == 0
    assert p.git("log", "-1", "--format=%an <%ae>").strip() == "Test User <test@example.com>"


def test_a_git_command_that_fails_is_one_error_line_naming_it_and_why(
    committed: VaultProject,
):
    """A reference-transaction hook refuses every ref update (as a repository policy or a
    broken hook would): `commit` fails in `git commit`. One `Error:` line names the git command,
    git's reason and what the hook said (escaped), exit 1, nothing committed or left behind."""
    p = committed
    hook = p.root / ".git" / "hooks" / "reference-transaction"
    hook.write_text(
        "#!/bin/sh\n"
        '[ "$1" = prepared ] || exit 0\n'
        "printf 'frozen by policy\\033[2J\\n' >&2\n"
        "exit 1\n"
    )
    hook.chmod(0o755)
    deploy(p, "prod", "v2")
    was = before(p)
    result = p.cli("commit", "prod")
    line = assert_refused(
        result, 1, "git commit failed", "ref updates aborted by hook", project=p, was=was
    )
    assert "frozen by policy\\x1b[2J" in line, line  # the hook's words, escaped
    assert "\x1b" not in result.err
    hook.unlink()
    assert p.cli("commit", "prod").code == 0


def test_without_git_on_path_commit_says_to_install_it(committed: VaultProject, tmp_path: Path):
    empty = tmp_path / "no-git-here"
    empty.mkdir()
    deploy(committed, "prod", "v2")
    was = before(committed)
    result = committed.cli("commit", "prod", env=dict(committed.env, PATH=str(empty)))
    assert_refused(result, 2, "git is not installed", "install git", project=committed, was=was)


# --- repository discovery, through the library -------------------------------------------


def test_discovery_finds_the_top_and_git_dir_and_refuses_what_it_cannot_use(
    vault_project: VaultProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The same messages GitPython's discovery gave: outside a repository, a bare one; plus a
    git directory that is not a work tree, and a detached HEAD for committing."""
    p = vault_project
    for name, value in p.env.items():  # this test's HOME and git config, as the CLI gets them
        monkeypatch.setenv(name, value)
    sub = p.root / "infra"
    store = GitStore(sub)
    assert store.top == p.root.resolve() and store.git_dir == (p.root / ".git").resolve()
    assert store.relative(sub / "x") == "infra/x" and store.current_branch() == "main"
    assert store.head() == p.git("rev-parse", "HEAD").strip()
    with pytest.raises(ConfigError, match="is outside the repository"):
        store.relative(tmp_path)

    outside = tmp_path / "outside"
    outside.mkdir()
    for where in (outside, tmp_path / "missing"):
        with pytest.raises(ConfigError, match="is not inside a git repository") as info:
            GitStore(where)
        assert info.value.hint == "run `git init` there first"
    bare = tmp_path / "bare.git"
    git("init", "-q", "--bare", str(bare), cwd=tmp_path, env=p.env)
    with pytest.raises(ConfigError, match="the repository is bare"):
        GitStore(bare)
    with pytest.raises(ConfigError, match="inside a git directory"):
        GitStore(p.root / ".git")

    p.git("checkout", "-q", "--detach")
    with pytest.raises(GitError, match="HEAD is detached") as detached:
        store.current_branch()
    assert detached.value.hint == "check out a branch before committing state"

    monkeypatch.setenv("PATH", str(outside))
    with pytest.raises(GitNotFoundError):
        GitStore(p.root)


def test_shared_ancestors_are_the_proper_ancestors_of_every_commit_given(
    tmp_path: Path, env: dict[str, str]
):
    """A-B-C on main, D forked from A, M merges D into C: the trust rule for retired keys
    (vault.versions.RetiredKeys) shows a version only from what this returns."""
    git("init", "-q", cwd=tmp_path, env=env)

    def commit(name: str) -> str:
        (tmp_path / name).write_text(name)
        git("add", name, cwd=tmp_path, env=env)
        git("commit", "-q", "-m", name, cwd=tmp_path, env=env)
        return git("rev-parse", "HEAD", cwd=tmp_path, env=env).strip()

    a = commit("a")
    b = commit("b")
    c = commit("c")
    git("checkout", "-q", "-b", "side", a, cwd=tmp_path, env=env)
    d = commit("d")
    git("checkout", "-q", "-", cwd=tmp_path, env=env)
    git("merge", "-q", "--no-edit", "side", cwd=tmp_path, env=env)
    m = git("rev-parse", "HEAD", cwd=tmp_path, env=env).strip()
    assert shared_ancestors(tmp_path, [c, d]) == {a}
    assert shared_ancestors(tmp_path, [m]) == {a, b, c, d}
    assert shared_ancestors(tmp_path, [c, b]) == {a}  # never a commit itself
    assert shared_ancestors(tmp_path, [m, d]) == {a}
    assert shared_ancestors(tmp_path, [a]) == set()
    assert shared_ancestors(tmp_path, []) == set()
