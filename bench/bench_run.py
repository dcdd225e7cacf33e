"""`sst-vault run` against a loopback git remote: where one run's time goes, and contention.

    python bench/bench_run.py                 # 5 single runs, 4 runners x 3 runs, contention
    python bench/bench_run.py --runners 6 --rounds 2 --repeat 9
    python bench/bench_run.py --only-contention --many 16 --one 8 --rounds 2

Part 1 runs `sst-vault run --stage prod -- python -c pass` (a no-op deploy that leaves the
state unchanged) and `... -- python bump.py` (a deploy that changes it, so commit and push do
real work) against `git daemon` on 127.0.0.1, with SST_VAULT_TIMINGS=1, and prints the median
of each phase: setup (key, repo), lock, pull, prepare, command, commit, push, unlock.
Part 2 starts N clones ("runners") at once, each doing R runs of the bumping command under
`--lock-timeout`, and reports wall time, runs per second and the lock's overhead against the
same number of runs done one after another; the counter in the state must equal N x R.
Part 3 (contention, issue 9) starts N runners on N different stages at once (preview stages,
all pushing to one branch), then N' runners on one stage (waiting for each other's lock), each
doing R runs, and reports runs per second, the success rate (runs that exited 0), whether every
update arrived (each stage's counter) and whether history stayed linear.
Not part of the test suite: timings are never asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from lockutil import (  # noqa: E402
    BUMP,
    DEPLOY,
    STAGE,
    Daemon,
    Team,
    bump_cmd,
    counter_of,
    deploy_cmd,
    make_team,
)

PY = sys.executable
PHASES = ("setup", "lock", "pull", "prepare", "command", "commit", "push", "unlock")


def vault(project, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "vault", "--sst-home", str(project.home), *args],
        cwd=project.root,
        env=env or project.env,
        capture_output=True,
        text=True,
    )


def timed_run(project, command: list[str]) -> tuple[float, dict[str, float]]:
    env = dict(project.env, SST_VAULT_TIMINGS="1")
    start = time.perf_counter()
    result = vault(project, "run", "--stage", STAGE, "--", *command, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"run failed: {result.stderr}")
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("sst-vault timings:"))
    phases = {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", line)}
    return wall, phases


def part1(team: Team, script: Path, repeat: int) -> None:
    runner = team.clone("single")
    baseline = statistics.median(_time([PY, "-c", "pass"]) for _ in range(repeat))
    ls_remote = statistics.median(
        _time(["git", "-C", str(runner.root), "ls-remote", "origin", "HEAD"]) for _ in range(repeat)
    )
    print(
        f"\nreference: python -c pass {baseline * 1000:.0f} ms; "
        f"git ls-remote over git:// {ls_remote * 1000:.0f} ms"
    )
    for label, command in (("no-op", [PY, "-c", "pass"]), ("bump", bump_cmd(runner, script))):
        timed_run(runner, command)  # warm-up, unmeasured
        samples = [timed_run(runner, command) for _ in range(repeat)]
        walls = [w for w, _ in samples]
        print(f"\n`sst-vault run` around a {label} command, median of {repeat} (ms)")
        print("  " + " ".join(f"{p:>8}" for p in (*PHASES, "in-proc", "wall")))
        cells = [statistics.median(s[1].get(p, 0.0) for s in samples) for p in PHASES]
        inproc = statistics.median(s[1].get("total", 0.0) for s in samples)
        row = [*cells, inproc, statistics.median(walls)]
        print("  " + " ".join(f"{v * 1000:8.0f}" for v in row))
        overhead = statistics.median(walls) - statistics.median(s[1]["command"] for s in samples)
        print(
            f"  sst-vault's own share: {overhead * 1000:.0f} ms "
            f"= {overhead / baseline:.0f} x `python -c pass`"
        )


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def part2(team: Team, script: Path, runners: int, rounds: int) -> None:
    clones = [team.clone(f"runner{i}") for i in range(runners)]
    start_counter = _remote_counter(team, "before")
    # Serial reference: the same number of runs, one after another, on one clone.
    start = time.perf_counter()
    for _ in range(runners * rounds):
        timed_run(clones[0], bump_cmd(clones[0], script))
    serial = time.perf_counter() - start

    start = time.perf_counter()
    procs = []
    for clone in clones:
        one = [
            PY,
            "-m",
            "vault",
            "--sst-home",
            str(clone.home),
            "run",
            "--stage",
            STAGE,
            "--lock-timeout",
            "600",
            "--",
            *bump_cmd(clone, script),
        ]
        line = " && ".join([shlex.join(one)] * rounds)
        procs.append(
            subprocess.Popen(
                ["sh", "-c", line],
                cwd=clone.root,
                env=clone.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a runner failed:\n{out}")
    contended = time.perf_counter() - start
    total = runners * rounds
    end_counter = _remote_counter(team, "after")
    merges = team.remote_git("rev-list", "--merges", "main").strip()
    print(f"\n{runners} runners x {rounds} runs contending for {STAGE} (git daemon on loopback)")
    print(f"  {'runs':>6} {'serial s':>9} {'contended s':>12} {'runs/s':>7} {'vs serial':>10}")
    print(
        f"  {total:>6} {serial:9.2f} {contended:12.2f} {total / contended:7.2f} "
        f"{contended / serial:9.2f}x"
    )
    ok = end_counter - start_counter == 2 * total and not merges and not team.lock_refs()
    print(
        f"  counter +{end_counter - start_counter} (expected +{2 * total}), linear history "
        f"{'yes' if not merges else 'NO'}, lock refs left {len(team.lock_refs())}: "
        f"{'ok' if ok else 'FAILED'}"
    )


def _remote_counter(team: Team, name: str, stage: str = STAGE) -> int:
    fresh = team.clone(f"check-{name}")
    if vault(fresh, "prepare", stage).returncode != 0:
        return 0  # never deployed
    return counter_of(fresh, stage)


def part3(team: Team, tmp: Path, many: int, one: int, rounds: int) -> None:
    """N runners on N stages, then N' runners on one stage: rate, success, nothing lost."""
    deploy = tmp / "deploy.py"
    deploy.write_text(DEPLOY)
    print(
        f"\ncontention over git daemon on loopback, {rounds} run(s) per runner, all at once "
        f"(push deadline {os.environ.get('SST_VAULT_PUSH_TIMEOUT', '600')} s)"
    )
    print(
        f"  {'case':<22} {'runs':>5} {'ok':>5} {'success':>8} {'wall s':>7} {'runs/s':>7} "
        f"{'updates':>9} {'linear':>6} {'push retries':>12}"
    )
    clones = [team.clone(f"c{i}") for i in range(max(many, one))]
    cases = [
        (f"{many} runners/{many} stages", [(c, f"pv-{i}") for i, c in enumerate(clones[:many])]),
        (f"{one} runners/1 stage", [(c, "shared") for c in clones[:one]]),
    ]
    for label, pairs in cases:
        stages = sorted({stage for _, stage in pairs})
        before = {s: _remote_counter(team, f"b-{label[:2]}-{s}", s) for s in stages}
        procs = []
        start = time.perf_counter()
        for clone, stage in pairs:
            one_run = [
                PY,
                "-m",
                "vault",
                "--sst-home",
                str(clone.home),
                "run",
                "--stage",
                stage,
                "--lock-timeout",
                "900",
                *deploy_cmd(clone, deploy, stage),
            ]
            line = "; ".join([shlex.join(one_run) + " || echo RUN-FAILED >&2"] * rounds)
            procs.append(
                subprocess.Popen(
                    ["sh", "-c", line],
                    cwd=clone.root,
                    env=clone.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        errors = [proc.communicate()[1] for proc in procs]
        wall = time.perf_counter() - start
        total = len(pairs) * rounds
        failed = sum(err.count("RUN-FAILED") for err in errors)
        ok = total - failed
        after = {s: _remote_counter(team, f"a-{label[:2]}-{s}", s) for s in stages}
        expected = {s: rounds * sum(1 for _, st in pairs if st == s) for s in stages}
        arrived = sum(after[s] - before[s] for s in stages)
        merges = team.remote_git("rev-list", "--merges", "main").strip()
        retries = sum(
            int(n) - 1 for err in errors for n in re.findall(r"pushed after (\d+) attempts", err)
        )
        print(
            f"  {label:<22} {total:>5} {ok:>5} {ok / total:8.0%} {wall:7.1f} {total / wall:7.2f} "
            f"{arrived:>4}/{sum(expected.values()):<4} {'yes' if not merges else 'NO':>6} "
            f"{retries:>12}"
        )
        said = [ln for err in errors for ln in err.splitlines() if ln.startswith("Error:")]
        if said:
            print(f"    a failed run said: {said[0][:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--many", type=int, default=16, help="runners on as many stages")
    parser.add_argument("--one", type=int, default=8, help="runners on one stage")
    parser.add_argument("--only-contention", action="store_true", help="part 3 alone")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    from conftest import base_env

    (tmp / "remotes").mkdir()
    daemon = Daemon(tmp / "remotes", base_env(tmp)).start()
    try:
        team = make_team(tmp, daemon, seeded=True)
        script = tmp / "bump.py"
        script.write_text(BUMP)
        print(
            f"git {subprocess.run(['git', '--version'], capture_output=True, text=True).stdout}"
            f"python {sys.version.split()[0]}, remote git://127.0.0.1:{daemon.port}"
        )
        if not args.only_contention:
            part1(team, script, args.repeat)
            part2(team, script, args.runners, args.rounds)
        part3(team, tmp, args.many, args.one, args.rounds)
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
