"""Running the real SST CLI offline in tests (see tests/SST_FACTS.md for why each setting).

Plain module, no pytest import: tests call `missing_reason()` and `conftest.skip_or_fail` on a
reason (with CI set a missing SST fails).

Where the binary comes from, first match wins:
1. `SST_VAULT_TEST_SST_BIN` (a path to the `sst` binary or to npm's `sst` wrapper);
2. the cache `.ci/install-sst` fills (`SST_VAULT_TEST_SST_DIR`, default
   `~/.cache/sst-vault-tests/sst`);
3. `sst` on PATH, if `sst version` says it is SST.
With `SST_VAULT_TEST_INSTALL_SST=1`, `find_sst_binary` runs `.ci/install-sst` when nothing is
found (it needs the npm registry).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTALLER = REPO / ".ci" / "install-sst"

# A minimal project: `home: "local"` and no providers, so SST never needs the network.
SST_CONFIG = """\
/// <reference path="./.sst/platform/config.d.ts" />
export default $config({
  app(input) {
    return {
      name: "%(app)s",
      removal: "remove",
      home: "local",
    };
  },
  async run() {},
});
"""


# SST 4.17.1 loads the stage's and `_fallback`'s passphrases on two goroutines that write one
# map unguarded; about 2 in 100 `sst secret list` runs die in the Go runtime with this line
# (tests/SST_FACTS.md). Every command the tests run is idempotent, so a crash of SST's own is
# run again, a bounded number of times, rather than failing a test of ours.
SST_MAP_RACE = "fatal error: concurrent map"
RACE_ATTEMPTS = 5
# Every such retry, as "sst ARGS (attempt N)": each is also printed to stderr when it happens,
# and conftest's terminal summary prints the count, so a rise in SST's crash rate shows.
RETRIES: list[str] = []


def _cache_dir() -> Path:
    env = os.environ.get("SST_VAULT_TEST_SST_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sst-vault-tests" / "sst"


def _looks_like_sst(path: str) -> bool:
    # Any SST run creates `<config>/sst/bin`: point it at a scratch directory, not at ~/.config.
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": scratch,
            "XDG_CONFIG_HOME": scratch,
            "TMPDIR": scratch,
            "SST_SKIP_DEPENDENCY_CHECK": "1",
            "SST_TELEMETRY_DISABLED": "1",
        }
        try:
            out = subprocess.run(
                [path, "version"], env=env, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return out.returncode == 0 and out.stdout.startswith("sst ")


def find_sst_binary() -> Path | None:
    """The real `sst` binary to test against, or None (the test then skips, or fails in CI)."""
    env = os.environ.get("SST_VAULT_TEST_SST_BIN")
    if env:
        path = Path(env)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    for candidate in sorted(_cache_dir().glob("node_modules/sst-*-*/bin/sst")):
        if os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("sst")
    if on_path and _looks_like_sst(on_path):
        return Path(on_path)
    if os.environ.get("SST_VAULT_TEST_INSTALL_SST") == "1":
        out = subprocess.run([str(INSTALLER)], capture_output=True, text=True, timeout=600)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    return None


def missing_reason() -> str | None:
    """Why the real-SST tests cannot run here, or None when they can."""
    if find_sst_binary() is None:
        return (
            "real SST CLI not found: run .ci/install-sst, or set SST_VAULT_TEST_SST_BIN, "
            "or SST_VAULT_TEST_INSTALL_SST=1"
        )
    if shutil.which("node") is None:
        return "the SST CLI evaluates sst.config.ts with `node`, which is not on PATH"
    return None


@dataclass
class SstProject:
    """A throwaway SST app with `home: "local"`, and an SST home of its own.

    `root` holds `project/` (sst.config.ts), `config/` (XDG_CONFIG_HOME, so the SST home is
    `config/sst`), `home/` (HOME) and `tmp/` (TMPDIR: SST leaves an `sst-<time>.log` there on
    every run). Nothing touches the real home directory.
    """

    root: Path
    binary: Path
    app: str = "vaulttest"
    project: Path = field(init=False)
    config_home: Path = field(init=False)

    def __post_init__(self) -> None:
        self.project = self.root / "project"
        self.config_home = self.root / "config"
        for d in (self.project, self.config_home, self.root / "home", self.root / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        config = self.project / "sst.config.ts"
        if not config.exists():
            config.write_text(SST_CONFIG % {"app": self.app})

    @property
    def sst_home(self) -> Path:
        """`<XDG_CONFIG_HOME>/sst`, what `sst version --verbose` prints as `config`."""
        return self.config_home / "sst"

    def env(self, config_home: Path | None = None) -> dict[str, str]:
        """The environment that lets SST run offline and keeps it inside `root`."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root / "home"),
            "XDG_CONFIG_HOME": str(config_home or self.config_home),
            "TMPDIR": str(self.root / "tmp"),
            # Skip the pulumi/bun download that every command otherwise attempts.
            "SST_SKIP_DEPENDENCY_CHECK": "1",
            # No posthog calls (they fail offline and slow every command down).
            "SST_TELEMETRY_DISABLED": "1",
            # The platform "install" runs `bun install` for the providers; with none declared
            # a no-op does, and nothing is fetched.
            "SST_BUN_PATH": shutil.which("true") or "/bin/true",
        }

    def run(
        self, *args: str, config_home: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        for attempt in range(1, RACE_ATTEMPTS + 1):
            out = subprocess.run(
                [str(self.binary), *args],
                cwd=self.project,
                env=self.env(config_home),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=120,
            )
            if not (out.returncode != 0 and SST_MAP_RACE in out.stderr):
                break
            if attempt < RACE_ATTEMPTS:
                RETRIES.append(f"sst {' '.join(args)} (attempt {attempt + 1})")
                print(
                    f"sst_real: SST's own concurrent-map crash on `sst {' '.join(args)}`; "
                    f"retry {attempt} of {RACE_ATTEMPTS - 1} ({len(RETRIES)} in this run)",
                    file=sys.stderr,
                )
        if check and out.returncode != 0:
            log = self.project / ".sst" / "log" / "sst.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise AssertionError(
                f"sst {' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}\n{tail}"
            )
        return out

    def secret_set(
        self,
        name: str,
        value: str,
        stage: str,
        fallback: bool = False,
        config_home: Path | None = None,
    ) -> None:
        args = ["secret", "set", name, value, "--stage", stage]
        self.run(*args, *(["--fallback"] if fallback else []), config_home=config_home)

    def secret_list(self, stage: str, config_home: Path | None = None) -> dict[str, dict[str, str]]:
        """`sst secret list` parsed: {"fallback": {...}, stage: {...}} (sections present only).

        SST prints Go map order (random), so the result is a dict, never compared as text.
        Values must not contain newlines.
        """
        out = self.run("secret", "list", "--stage", stage, config_home=config_home).stdout
        sections: dict[str, dict[str, str]] = {}
        current: dict[str, str] | None = None
        for line in out.splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
                name = "fallback" if title == "fallback" else title.split("/", 1)[-1]
                current = sections.setdefault(name, {})
            elif line.strip() and current is not None:
                key, _, value = line.partition("=")
                current[key] = value
        return sections

    def state_export(
        self, stage: str, decrypt: bool = False, config_home: Path | None = None
    ) -> str:
        args = ["state", "export", "--stage", stage, *(["--decrypt"] if decrypt else [])]
        return self.run(*args, config_home=config_home).stdout

    def config_dir(self) -> Path:
        """The `config` line of `sst version --verbose` (SST's home; state lives below it)."""
        out = self.run("version", "--verbose").stdout
        for line in out.splitlines():
            if line.startswith("config "):
                return Path(line.removeprefix("config "))
        raise AssertionError(f"no config line in `sst version --verbose`:\n{out}")
