"""Rescued states: deploy states that could not reach the branch, kept on the remote.

When `run` cannot push a state to the branch (a protection rule or hook refuses it, the remote
changed the same stage's files, the push deadline passed), it pushes the commit to
`<rescue root>/<app>/<stage>/<sha12>` (default root `refs/sst-vault/rescue`) and keeps the
stage's deploy lock, recording the rescue ref in it: nobody deploys from the older state the
branch still has. Landing puts the rescued commits on the branch (fetch, pull, cherry-pick onto
the branch, push with the usual rebase-and-retry), and only commits that change nothing but
that stage's vault files (whoever can push can plant a rescue ref); then it deletes the rescue
ref with a lease on the commit it held and releases the lock that recorded it. Dropping keeps
a local copy under `refs/sst-vault/dropped/...` before deleting the remote ref.

Ref names and commit text read from the remote are untrusted: stages that are not valid stage
names are listed escaped and never landed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vault.errors import GitError, RefusedError, UsageError
from vault.gitstore import GitStore, diverged, porcelain_status, unrelated
from vault.lock import DeployLock, LockInfo, rescue_root
from vault.paths import KINDS, check_stage
from vault.printable import printable
from vault.project import Project


@dataclass
class Rescued:
    stage: str
    ref: str
    sha: str
    subject: str = ""
    date: str = ""

    @property
    def id(self) -> str:
        return self.ref.rsplit("/", 1)[1]

    def land_command(self) -> str:
        return f"sst-vault rescue land --stage {self.stage} {self.id}"


def _remote(project: Project, store: GitStore) -> str:
    remote = project.config.remote
    store.require_remote(remote)
    return remote


def list_(
    project: Project, stage: str | None = None, store: GitStore | None = None
) -> list[Rescued]:
    """Every rescued state of this app on the remote (of one stage when given), oldest first."""
    store = store or GitStore(project.root)
    remote = _remote(project, store)
    root = f"{rescue_root(project.config.lock_prefix)}/{project.app}/"
    pattern = root + (f"{check_stage(stage)}/*" if stage else "*")
    result = store.git("ls-remote", "--refs", remote, pattern, check=False)
    if result.code != 0:
        raise GitError(f"cannot list rescued states on {remote}: {result.reason}")
    found: list[Rescued] = []
    for line in result.out.splitlines():
        sha, _, ref = line.partition("\t")
        rest = ref.removeprefix(root)
        if ref == rest or rest.count("/") != 1:
            continue
        name = rest.split("/", 1)[0]
        if stage and name != stage:
            continue
        found.append(Rescued(stage=name, ref=ref, sha=sha))
    if found:
        store.git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            remote,
            *[r.ref for r in found],
            check=False,
        )
        for item in found:
            shown = store.git("log", "-1", "--format=%cI%x00%s", item.sha, check=False)
            if shown.code == 0 and "\0" in shown.out:
                item.date, item.subject = shown.out.strip().split("\0", 1)
    return sorted(found, key=lambda r: (r.date, r.ref))


def pick(project: Project, stage: str, which: str | None, store: GitStore) -> Rescued:
    """The rescued state `which` (its id or full ref) of `stage`, or the only one there is."""
    stage = check_stage(stage)
    waiting = list_(project, stage, store)
    if which:
        match = [r for r in waiting if which in (r.ref, r.id)]
        if not match:
            raise UsageError(
                f"no rescued state {printable(which, 80)!r} for {project.app}/{stage}",
                f"list them with `sst-vault rescue list --stage {stage}`",
            )
        return match[0]
    if not waiting:
        raise UsageError(f"no rescued state is waiting for {project.app}/{stage}")
    if len(waiting) > 1:
        ids = ", ".join(r.id for r in waiting)
        raise UsageError(
            f"{len(waiting)} rescued states are waiting for {project.app}/{stage} ({ids})",
            "name one: `sst-vault rescue land --stage STAGE ID` (oldest first)",
        )
    return waiting[0]


@dataclass
class Landed:
    rescued: Rescued
    head: str = ""
    already: bool = False
    lock_released: bool = False
    lock_holder: LockInfo | None = None


def land(
    project: Project,
    stage: str,
    which: str | None = None,
    *,
    push_timeout: float | None = None,
    info: Callable[[str], None] = lambda _msg: None,
) -> Landed:
    """Put a rescued state on the branch, delete its rescue ref, release the lock it kept."""
    store = GitStore(project.root)
    remote = _remote(project, store)
    branch = store.current_branch()
    item = pick(project, stage, which, store)
    files = [store.relative(project.repo.vault_file(kind, item.stage)) for kind in KINDS]
    if store.git("status", "--porcelain", "--", *files).out.strip():
        raise RefusedError(
            f"{item.stage}'s vault files have uncommitted changes in this clone",
            "commit or discard them (`git status`), then land again",
        )
    if store.git("cat-file", "-e", f"{item.sha}^{{commit}}", check=False).code != 0:
        raise GitError(f"could not fetch {item.ref} from {remote}", "check the network, retry")
    store.pull(remote, files)
    result = Landed(item)
    if store.contains(item.sha):
        result.already = True
    else:
        before = store.head()
        _apply(store, item, files, remote, branch)
        try:
            store.push(remote, files, timeout=push_timeout)
        except BaseException:
            # The rescue ref still holds the state: leave this clone as the pull left it, so
            # the next `land` does not meet its own copy as a competing deploy.
            store.git("reset", "--quiet", "--keep", before, check=False)
            raise
        info(f"Landed {item.ref} on {branch} ({store.head()[:12]})")
    result.head = store.head()
    _delete_ref(store, remote, item)
    _release(project, item, store, result)
    return result


def _apply(store: GitStore, item: Rescued, files: list[str], remote: str, branch: str) -> None:
    """Cherry-pick the rescued commits onto HEAD unless the branch changed the same files."""
    base = store.git("merge-base", "HEAD", item.sha, check=False).out.strip()
    if not base:
        raise unrelated(item.ref, branch)
    theirs = set(store.git("diff", "--name-only", "--no-renames", base, "HEAD").out.split())
    ours = set(store.git("diff", "--name-only", "--no-renames", base, item.sha).out.split())
    foreign = sorted(ours - set(files))
    if foreign:
        # Anyone who can push can plant a rescue ref: never carry other files to the branch.
        raise RefusedError(
            f"{item.ref} changes {printable(foreign[0])}, which is not {item.stage}'s state: "
            "not landed",
            f"inspect it with `git log -p {base[:12]}..{item.sha[:12]}`; apply it by hand only "
            "if you trust it",
        )
    clash = sorted(theirs & ours)
    if clash:
        raise diverged(
            f"since {item.id} was rescued, {remote}/{branch}",
            clash[0],
            store.last_commit(f"{base}..HEAD", clash),
            "and landing it would undo that deploy",
            f"compare `git diff HEAD {item.sha[:12]} -- {' '.join(files)}`; if the branch's state "
            f"is right: `sst-vault rescue drop --stage {item.stage} {item.id}`; to keep the "
            f"rescued one: `git checkout {item.sha[:12]} -- {' '.join(clash)}`, commit, push, "
            "then drop the rescue",
        )
    picked = store.git(
        "-c", "core.editor=true", "cherry-pick", "--allow-empty", f"{base}..{item.sha}", check=False
    )
    if picked.code != 0:
        store.git("cherry-pick", "--abort", check=False)
        raise GitError(
            f"could not apply {item.ref} onto {branch}: {picked.reason}",
            "nothing was changed; apply it by hand with `git cherry-pick`",
        )


def _delete_ref(store: GitStore, remote: str, item: Rescued) -> None:
    result = store.git(
        "push",
        "--porcelain",
        f"--force-with-lease={item.ref}:{item.sha}",
        remote,
        f":{item.ref}",
        check=False,
    )
    if porcelain_status(result.out, item.ref) not in ("-", "="):
        raise GitError(
            f"could not delete {item.ref} on {remote}: {result.reason}",
            f"its state is on the branch now; delete it with `git push {remote} :{item.ref}`",
        )


def _release(project: Project, item: Rescued, store: GitStore, result: Landed) -> None:
    """Release the stage's lock if it is the one that kept this rescue."""
    lock = DeployLock(project, item.stage, store)
    holder = lock.status()
    result.lock_holder = holder
    if holder is not None and holder.rescue == item.ref:
        result.lock_released = lock._delete(holder.sha)
        if result.lock_released:
            lock._forget(holder.sha)


def drop(project: Project, stage: str, which: str) -> tuple[Rescued, str, Landed]:
    """Delete a rescued state from the remote (a local copy stays); release its lock."""
    store = GitStore(project.root)
    remote = _remote(project, store)
    item = pick(project, stage, which, store)
    if store.git("cat-file", "-e", f"{item.sha}^{{commit}}", check=False).code != 0:
        raise GitError(f"could not fetch {item.ref} from {remote}", "check the network, retry")
    keep = f"refs/sst-vault/dropped/{project.app}/{item.stage}/{item.id}"
    store.git("update-ref", keep, item.sha)
    _delete_ref(store, remote, item)
    result = Landed(item)
    _release(project, item, store, result)
    return item, keep, result
