"""The secret variables of sst-vault's environment, taken out of it before any child starts.

This module imports nothing but `os`: the CLI calls `take_environment` first thing, on every
command, `--help` included, and must stay fast.
"""

from __future__ import annotations

import contextlib
import os

ENV_KEY = "SST_VAULT_KEY"
ENV_KEY_FILE = "SST_VAULT_KEY_FILE"
ENV_KEY_FD = "SST_VAULT_KEY_FD"  # internal: the pipe a re-executed sst-vault reads them from
SECRET_VARIABLES = (ENV_KEY, ENV_KEY_FILE)
MAX_HANDOVER = 60 * 1024  # below Linux's 64 KiB pipe buffer; 16 keys take a few KB
_taken: dict[str, str] = {}


def take_environment() -> None:
    """Move SST_VAULT_KEY and SST_VAULT_KEY_FILE out of os.environ, before any child starts.

    The CLI calls this first thing, so no child (git, the command under
    `run`) can inherit the key or learn where the key file is. The values stay in this module.
    A process re-executed by `reexec_without_secrets` finds them in the pipe `SST_VAULT_KEY_FD`
    names instead, and closes it.
    """
    for name in SECRET_VARIABLES:
        value = os.environ.pop(name, None)
        if value is not None:
            _taken[name] = value
    fd_text = os.environ.pop(ENV_KEY_FD, None)
    if fd_text is not None and fd_text.isdigit():
        import json

        fd = int(fd_text)
        chunks = []
        try:
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            handed = json.loads(b"".join(chunks))
        except (OSError, ValueError):
            handed = {}
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        if isinstance(handed, dict):
            _taken.update(
                {k: v for k, v in handed.items() if k in SECRET_VARIABLES and isinstance(v, str)}
            )


def taken(name: str) -> str | None:
    """The value SST_VAULT_KEY or SST_VAULT_KEY_FILE had when this process started."""
    take_environment()
    return _taken.get(name)


def reexec_without_secrets(argv: list[str]) -> None:
    """On Linux, start this process again with the secret variables handed over through a pipe.

    A process's /proc/<pid>/environ shows the environment it was started with, whatever it
    removed since, and any process of the same user can read it: the command under `run`
    could read the key there. After this exec the environment never held it. Does nothing
    elsewhere, when there is nothing to hide, or when this process was re-executed already.
    """
    import json
    import sys

    if sys.platform != "linux" or not _taken or os.environ.get("SST_VAULT_REEXECED"):
        return
    payload = json.dumps(_taken).encode()
    if len(payload) > MAX_HANDOVER:  # the pipe's buffer must hold it: nobody reads it yet
        from vault.errors import KeyFormatError

        raise KeyFormatError(
            f"${ENV_KEY} or ${ENV_KEY_FILE} is over {MAX_HANDOVER // 1024} KiB",
            "it should hold secret keys (one a line) or a path: check what the variable holds",
        )
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, payload)  # a few KB at most: the pipe buffer holds it all
    finally:
        os.close(write_end)
    os.set_inheritable(read_end, True)
    # Only the secrets go: SST_VAULT_KEY_ID and SST_VAULT_PIN are pins the new process checks.
    env = {k: v for k, v in os.environ.items() if k not in (*SECRET_VARIABLES, ENV_KEY_FD)}
    env.update({ENV_KEY_FD: str(read_end), "SST_VAULT_REEXECED": "1"})
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and not stream.closed:  # None: started without fd 1 or 2
            stream.flush()
    os.execve(sys.executable, [sys.executable, "-m", "vault", *argv], env)
