"""The git diff driver survives reinstalls: it is `sst-vault textconv` found through PATH, not
the absolute path of the installation that ran `init`, and `doctor` runs it to check.

An "installation" here is a real virtual environment whose `bin/sst-vault` is the console
script pip writes; the packages come from the interpreter under test through a `.pth` file
(installing them again would only cost time).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import VaultProject, base_env, make_project
from helpers import deploy

ROOT = Path(__file__).resolve().parent.parent


def install(venv: Path) -> Path:
    """A venv at `venv` with `sst-vault` in its bin folder; returns that folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    paths = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), str(ROOT)}
    Path(site, "under-test.pth").write_text("\n".join(sorted(paths)) + "\n")
    script = venv / "bin" / "sst-vault"
    script.write_text(
        f"#!{python}\nimport sys\nfrom vault.cli.main import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return venv / "bin"


def with_path(env: dict[str, str], *first: Path) -> dict[str, str]:
    """env with PATH = first + the folders of PATH that hold no `sst-vault`."""
    rest = [
        p
        for p in env["PATH"].split(os.pathsep)
        if p and not Path(p, "sst-vault").exists()  # no other installation (pyenv's shim…)
    ]
    return {**env, "PATH": os.pathsep.join([*map(str, first), *rest])}


def log_p(project: VaultProject, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "log", "-p", "--", "infra/state/app"],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
    )


def doctor_driver_line(project: VaultProject, env: dict[str, str]) -> str:
    out = project.cli("doctor", env=env).out
    line = next(line for line in out.splitlines() if " diff driver: " in line)
    return " ".join(line.split())


def test_git_log_p_survives_a_rebuilt_virtualenv(tmp_path: Path) -> None:
    first = install(tmp_path / "venv-a")
    env = with_path(base_env(tmp_path), first)
    project = make_project(tmp_path, env=env)
    # init ran from the interpreter under test, but registered no path of any installation.
    command = project.git("config", "--get", "diff.sst-vault.textconv").strip()
    assert command == "sst-vault textconv"
    deploy(project, "prod", "marker-one")
    assert project.cli("commit", "prod").code == 0
    shown = log_p(project, project.env)
    assert shown.returncode == 0, shown.stderr
    assert '"marker": "marker-one"' in shown.stdout

    # The venv is deleted and made again somewhere else (a rebuild, a pipx reinstall).
    shutil.rmtree(tmp_path / "venv-a")
    second = install(tmp_path / "elsewhere" / "venv-b")
    project.env = with_path(project.env, second)
    shown = log_p(project, project.env)
    assert shown.returncode == 0, shown.stderr
    assert '"marker": "marker-one"' in shown.stdout
    assert (
        doctor_driver_line(project, project.env) == "ok diff driver: textconv = sst-vault textconv"
    )


def test_doctor_says_what_to_do_when_git_cannot_run_the_driver(tmp_path: Path) -> None:
    bin_ = install(tmp_path / "venv-a")
    project = make_project(tmp_path, env=with_path(base_env(tmp_path), bin_))
    deploy(project, "prod", "marker-one")
    assert project.cli("commit", "prod").code == 0
    # sst-vault no longer on PATH: git log -p fails, and doctor says exactly why and what to do.
    gone = with_path(project.env)
    assert log_p(project, gone).returncode != 0
    line = doctor_driver_line(project, gone)
    assert line.startswith(
        "fail diff driver: textconv = sst-vault textconv, but `sst-vault` is not on PATH"
    )
    assert "put sst-vault on PATH" in line

    # What versions before 0.2.0 registered: the absolute path of the installation.
    old = f"{tmp_path}/old-venv/bin/sst-vault textconv"
    project.git("config", "diff.sst-vault.textconv", old)
    line = doctor_driver_line(project, project.env)
    assert line.startswith(f"fail diff driver: textconv = {old} does not run (exit 127")
    assert line.endswith(
        "(run `sst-vault setup-git`: it registers `sst-vault textconv`, found through PATH)"
    )
    # An absolute path that still works is a warning: it breaks at the next rebuild.
    project.git("config", "diff.sst-vault.textconv", f"{bin_}/sst-vault textconv")
    assert doctor_driver_line(project, project.env).startswith(
        f"warn diff driver: textconv = {bin_}/sst-vault textconv works, but a fixed path breaks"
    )
    # setup-git puts the PATH form back.
    fixed = project.cli("setup-git")
    assert fixed.code == 0, fixed.output
    assert project.git("config", "--get", "diff.sst-vault.textconv").strip() == (
        "sst-vault textconv"
    )
    assert log_p(project, project.env).returncode == 0


def test_setup_git_warns_when_sst_vault_is_not_on_path(tmp_path: Path) -> None:
    bin_ = install(tmp_path / "venv-a")
    project = make_project(tmp_path, env=with_path(base_env(tmp_path), bin_))
    result = project.cli("setup-git", env=with_path(project.env))
    assert result.code == 0
    assert "Warning: `sst-vault` is not on PATH, so git cannot run the driver" in result.err
