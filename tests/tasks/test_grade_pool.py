"""The grading pool's processes die with their owner: SIGTERM, SIGKILL, stale socket folders.

Each test runs a real owner process (a small script wrapped in `rlvfast.cli.run_command`, as
the commands are) whose one worker is stuck in sympy on a hanging answer, then signals it.
Linux only: process states come from /proc.
"""
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from rlvfast.tasks.grade_pool import VerifyPool

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 20.0      # bound on each wait below; a leak is forever, so this only bounds a failure
START_S = 120.0    # the owner's start-up: Python, torch-free imports, the zygote's sympy warm-up
BUSY_TICKS = 50    # worker CPU time (1/100 s) that shows it is inside the hanging answer
OWNER_SCRIPT = """
import json, os, sys, time
from rlvfast.cli import run_command
from rlvfast.tasks.grading import Grader

def main(argv):
    grader = Grader(timeout=600.0, num_workers=1, use_fast_path=False)
    grader.start(wait=True)
    pool = grader._pool
    forks = []
    if argv == ["--fork"]:  # a forked child that holds the owner's end of the zygote's stdin
        forks.append(os.fork())
        if forks[0] == 0:
            time.sleep(600.0)
            os._exit(0)
    print(json.dumps({"zygote": pool.zygote_pid, "workers": pool.worker_pids, "forks": forks}), flush=True)
    grader.grade("\\\\boxed{9^{9^{9^{9}}}}", "1")  # sympy hangs in C for minutes

sys.exit(run_command(main, "owner", sys.argv[1:]))
"""


@pytest.fixture
def tmp_root():
    """A short private TMPDIR (a Unix socket path must stay under ~100 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="rgp-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _start_owner(tmp_root: Path, *args: str) -> tuple[subprocess.Popen, list[int], list[int]]:
    """Start the owner script; returns it, its [zygote pid, worker pid] once ready, and its forks."""
    script = tmp_root / "owner.py"
    script.write_text(OWNER_SCRIPT)
    env = dict(os.environ, TMPDIR=str(tmp_root), PYTHONPATH=str(REPO))
    with (tmp_root / "owner.err").open("wb") as stderr:
        owner = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                                 stderr=stderr, env=env, cwd=REPO)
    readable, _, _ = select.select([owner.stdout], [], [], START_S)
    line = owner.stdout.readline() if readable else b""
    if not line:
        owner.kill()
        owner.wait()
        pytest.fail(f"the owner printed no pids: {(tmp_root / 'owner.err').read_text()[-2000:]}")
    pids = json.loads(line)
    assert len(pids["workers"]) == 1, pids
    return owner, [pids["zygote"], *pids["workers"]], pids["forks"]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first); None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()


def _is_running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no memory and no CPU; its reaper is pid 1)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _wait_until_busy(pid: int) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        fields = _stat(pid)
        assert fields is not None, f"worker {pid} exited before it was signalled"
        if int(fields[11]) + int(fields[12]) >= BUSY_TICKS:  # utime + stime
            return
        time.sleep(0.1)
    pytest.fail(f"worker {pid} never got busy on the hanging answer")


def _running_after_wait(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + WAIT_S
    while (running := [pid for pid in pids if _is_running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running


def _kill_leftovers(owner: subprocess.Popen, pids: list[int]) -> None:
    """SIGKILL the owner and whichever of `pids` still run the pool or the owner (not a reused pid)."""
    if owner.poll() is None:
        owner.kill()
    owner.wait()
    owner.stdout.close()
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            is_ours = b"grade_pool" in cmdline or b"owner.py" in cmdline
            if is_ours and _is_running(pid):
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):
            pass


def _pool_folders(tmp_root: Path) -> set[str]:
    return {path.name for path in tmp_root.glob("rlvfast-grade-*")}


def test_sigterm_mid_answer_stops_every_process_and_removes_the_folder(tmp_root):
    owner, pids, _ = _start_owner(tmp_root)
    try:
        _wait_until_busy(pids[1])
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(timeout=WAIT_S) == 128 + signal.SIGTERM
        assert _running_after_wait(pids) == []
        assert _pool_folders(tmp_root) == set()
    finally:
        _kill_leftovers(owner, pids)


def test_sigkill_of_the_owner_kills_the_pool_and_the_next_start_removes_its_folder(tmp_root, monkeypatch):
    owner, pids, _ = _start_owner(tmp_root)
    try:
        _wait_until_busy(pids[1])
        owner.kill()
        owner.wait()
        assert _running_after_wait(pids) == []
    finally:
        _kill_leftovers(owner, pids)
    stale = _pool_folders(tmp_root)
    assert len(stale) == 1 and stale.pop().startswith(f"rlvfast-grade-{owner.pid}-")
    # Folders the next start must keep: a live owner's; a dead pid's whose lock someone holds
    # (an owner in another pid namespace); one without a lock file yet (mid-creation).
    kept = {f"rlvfast-grade-{os.getpid()}-live", f"rlvfast-grade-{owner.pid}-locked",
            f"rlvfast-grade-{owner.pid}-nolock"}
    for name in kept:
        (tmp_root / name).mkdir()
    for name in kept - {f"rlvfast-grade-{owner.pid}-nolock"}:
        (tmp_root / name / "lock").touch()
    with (tmp_root / f"rlvfast-grade-{owner.pid}-locked" / "lock").open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))
        pool = VerifyPool(num_workers=1, timeout=5.0)
        try:
            pool.start()
            own = {name for name in _pool_folders(tmp_root) if name.startswith(f"rlvfast-grade-{os.getpid()}-")}
            assert _pool_folders(tmp_root) == kept | own and len(own - kept) == 1
        finally:
            pool.close()
    assert _pool_folders(tmp_root) == kept


def test_sigkill_of_the_owner_kills_the_pool_while_a_fork_of_the_owner_lives(tmp_root):
    # The fork (a fork-started DataLoader worker, say) keeps the zygote's stdin open, so no
    # EOF comes: the zygote must notice its new parent pid.
    owner, pids, forks = _start_owner(tmp_root, "--fork")
    try:
        _wait_until_busy(pids[1])
        owner.kill()
        owner.wait()
        assert all(map(_is_running, forks)) and _running_after_wait(pids) == []
    finally:
        _kill_leftovers(owner, pids + forks)


def test_a_worker_dies_with_its_zygote():
    # An idle worker waits on its socket to the owner, which stays open: only the
    # parent-death signal ends it when the zygote is killed (say, by the OOM killer).
    pool = VerifyPool(num_workers=1, timeout=5.0)
    try:
        pool.start(wait=True)
        [worker] = pool.worker_pids
        os.kill(pool.zygote_pid, signal.SIGKILL)
        assert _running_after_wait([worker]) == []
    finally:
        pool.close()


def test_a_pool_started_by_a_thread_that_ends_keeps_working():
    # Linux's parent-death signal follows the *thread* that forked: a zygote that used it
    # would die as this thread ends, and its workers with it.
    pool = VerifyPool(num_workers=1, timeout=30.0)
    try:
        thread = threading.Thread(target=pool.start, kwargs={"wait": True})
        thread.start()
        thread.join(timeout=START_S)
        pids = [pool.zygote_pid, *pool.worker_pids]
        task = Path(f"/proc/self/task/{thread.native_id}")
        deadline = time.monotonic() + WAIT_S
        while task.exists() and time.monotonic() < deadline:  # join returns a bit before the OS thread ends
            time.sleep(0.01)
        assert len(pids) == 2 and not task.exists()
        assert pool.run([("\\frac{1}{2}", "0.5")]) == [(True, "ok")]
        assert [pool.zygote_pid, *pool.worker_pids] == pids and all(map(_is_running, pids))
    finally:
        pool.close()
