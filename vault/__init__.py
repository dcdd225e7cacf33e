"""sst-vault keeps SST's local state (`home: "local"`) encrypted in the app's own git repository.

Use the library the way the CLI does: open a project, then move state in one direction.

    from vault.commit import commit
    from vault.prepare import prepare
    from vault.project import Project

    project = Project.open()     # finds sst-vault.toml upward
    prepare(project, ["prod"])   # repo -> SST home, before `sst deploy`
    commit(project, ["prod"])    # SST home -> repo, after it

The map, one idea per module, in layers; a module imports only from its own layer or a lower
one (tests/test_architecture.py holds the code to it, and to README's "Layout"):

- Operations. Moving state: `prepare`, `commit`, `status` over the sync `records` and a
  stage's files and locks in `stagefiles`. Writing the repository: `change`, the one unit
  every writing command goes through (locks, seal, verify, swap, commit, push), and `sealing`,
  the one way a vault file is written. Reviewing and undoing: `versions`, `diff`, `log`,
  `rollback`, `rendering` (checkpoints and masked secrets for display). Setting up: `init`,
  `gitsetup` (how this clone's git shows vault files), `migrate`, `scan`, `doctor`. The team:
  `team` (recipients, rotation, upgrade), `keyimport` (a member's key into the keyring),
  `trustchange` (accepting a new vault identity). Deploying: `lock` (the cross-machine deploy
  lock on the remote), `runner` (`sst-vault run`), `rescue` (states that could not reach the
  branch), `resolve` and `worktree` (what git's index says about vault files: conflicts,
  uncommitted, stale locks).
- Project and keys. `project` (the open vault: config, SST home, verified keys), `config`
  (`sst-vault.toml`, settings only), `keys` (where the secret comes from: keys belong in
  SST_VAULT_KEY in CI and in the OS keyring on a laptop, never in an argument or a file in the
  repo), `keyenv` (the secret variables leave the process environment first thing),
  `oskeyring` (every keyring call), `keyrecord` (the signed key record: its docstring is the
  specification) and `trust` (the order of checks: record, pins, this machine's memory, the
  record's git history, then the data key). Who can read the vault is decided there;
  `sst-vault.toml` is never trusted for it.
- Git, files and format. `gitstore` (the only place git starts), `safefs` (symlink-proof,
  all-or-nothing file changes with a journal), `paths` (every path the tool touches),
  `envelope` (the file format: its docstring is the specification), `jsoncheck` (the state
  JSON check), `printable` (text from others, escaped for a terminal), `threads` (work on
  other threads: an ordered map, a call in the background, an iterator produced ahead).
- `errors`: one hierarchy; every failure is a `vault.errors.VaultError` carrying a one-line
  hint, and `cli.main` maps it to an exit code.

Do not decrypt into the SST home yourself, and do not copy vault files between stages: every
file is bound to its app, stage and kind, and `prepare` writes only after everything verified.

This module imports nothing, so that `sst-vault --help` stays fast. `__version__` is the one
place the version lives (pyproject.toml reads it; the release procedure is in CHANGELOG.md).
"""

__version__ = "0.2.0"
