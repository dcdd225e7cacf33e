"""sst-vault keeps SST's local state (`home: "local"`) encrypted in the app's own git repository.

Use the library the way the CLI does: open a project, then move state in one direction.

    from vault.commit import commit
    from vault.prepare import prepare
    from vault.project import Project

    project = Project.open()     # finds sst-vault.toml upward
    prepare(project, ["prod"])   # repo -> SST home, before `sst deploy`
    commit(project, ["prod"])    # SST home -> repo, after it

Where things live, one module each: the file format in `envelope` (its docstring is the
specification), where the secret comes from and the key id in `keys` (keys belong in
SST_VAULT_KEY in CI and in the OS keyring on a laptop, never in an argument or a file in the
repo), every path the tool touches in `paths`, symlink-proof file I/O in `safefs`, git in
`gitstore`, the cross-machine deploy lock in `lock`, and `sst-vault run` in `runner`.

Who can read the vault is decided by the signed key record (`keyrecord`: its docstring is the
specification) and the order of checks in `trust` (record, pins, this machine's memory, the
record's git history, then the data key); `sst-vault.toml` holds settings only. The secret
variables leave the process environment first thing (`keyenv`).

The operations, one idea each: `sync` is the face of `prepare`, `commit` and `status` (each
its own module, over the sync `records` and `stagefiles`, the stage's files and locks);
`sealing` is the one way a vault file is written; `versions`, `diff`, `log` and `rollback`
review and undo through git history, `rendering` shows checkpoints and masked secrets;
`gitsetup` owns how this clone's git shows vault files (attribute and ignore blocks, the diff
driver). The CLI (`cli.main`, shared options in `cli.options`) sits on top; README's
"Layout" lists every module by layer.

Do not decrypt into the SST home yourself, and do not copy vault files between stages: every
file is bound to its app, stage and kind, and `sync` writes only after everything verified.
Every failure is a `vault.errors.VaultError` carrying a one-line hint.

This module imports nothing, so that `sst-vault --help` stays fast. `__version__` is the one
place the version lives (pyproject.toml reads it; the release procedure is in CHANGELOG.md).
"""

__version__ = "0.2.0"
