"""The math-verify process pool behind `rlvfast.tasks.grading.Grader`: hard per-answer time-outs.

sympy can hang for minutes inside C code (`9^{9^{9}}`) where math-verify's own
`signal.alarm` time-outs cannot reach, and signals work only in a main thread. So each
answer runs in a worker process that the parent kills at the deadline; the answer grades
"timeout" and a new worker takes the dead one's place.

Processes: the parent starts one *zygote* with fork+exec (`python -c`, never a fork of the
parent, which may run torch threads, and never a re-import of the parent's `__main__` as
multiprocessing spawn/forkserver do). The zygote imports math-verify and warms sympy once,
stays single-threaded, and forks a worker on each request; the worker connects back over a
Unix socket. A replacement after a kill so costs a fork (~20 ms), not a Python + sympy
start-up (~1.3 s, several seconds on a loaded 2-core machine).

Lifetime: every process dies with the parent, even on the parent's SIGKILL.
- The zygote watches: it leaves at EOF on its stdin (a pipe from the parent) or when its
  parent pid changes (checked every 0.5 s), and then SIGKILLs its process group (it leads
  one: itself and its workers). It does not use a parent-death signal, which Linux sends
  when the parent *thread* that forked it exits, and the pool may start from any thread.
- A worker, often stuck in sympy C code where it can watch nothing, gets SIGKILL when the
  zygote exits (Linux `PR_SET_PDEATHSIG`; the zygote is single-threaded, so its forking
  thread lives as long as it does). Elsewhere the zygote's group kill covers it.
- `close()` SIGKILLs the zygote's group and removes the socket folder; so does garbage
  collection of the pool, and interpreter exit (`weakref.finalize`). SIGTERM gets there when
  the command runs under `rlvfast.cli.run_command` (SIGTERM -> SystemExit).
- The socket folder, `$TMPDIR/rlvfast-grade-<owner pid>-*`, holds a lock the owner keeps
  for its life. A folder left by a killed owner goes at the next pool start in any process:
  one whose owner pid is dead and whose lock nobody holds (the lock keeps a live owner's
  folder even where its pid is not visible, in another pid namespace).

Not here: answer extraction, the in-process fast path and the result cache (`grading`).
Not thread-safe on its own: `Grader` serializes calls with a lock.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import weakref
from collections import deque
from pathlib import Path
from typing import IO

START_TIMEOUT_S = 60.0  # a worker not connected and ready by then: the pool is broken
_POLL_S = 0.5           # wake-up while forks are pending, to notice a dead zygote
_PARENT_CHECK_S = 0.5   # how often the zygote checks that its parent is alive
_PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
_FOLDER_PREFIX = "rlvfast-grade-"
_FOLDER_RE = re.compile(r"rlvfast-grade-(\d+)-[a-z0-9_]+")  # the owner pid, then mkdtemp's suffix


class _Worker:
    """One forked grading process at the other end of a Unix socket."""
    __slots__ = ("sock", "pid", "buffer", "job", "since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid: int | None = None    # sent with "ready"
        self.buffer = b""
        self.job: int | None = None     # index into the current run's jobs
        self.since = time.monotonic()   # connect time, then the current job's dispatch time

    @property
    def is_ready(self) -> bool:
        return self.pid is not None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, job: int, answer: str, gold: str) -> None:
        self.sock.sendall((json.dumps([job, answer, gold]) + "\n").encode())
        self.job, self.since = job, time.monotonic()

    def read_replies(self) -> list[list] | None:
        """Job replies available now (`ready` is absorbed); None at EOF (the worker died)."""
        try:
            chunk = self.sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            return None
        *lines, self.buffer = (self.buffer + chunk).split(b"\n")
        replies = []
        for message in map(json.loads, lines):
            if message[0] == "ready":
                self.pid = int(message[1])
            else:
                replies.append(message)
        return replies

    def close(self) -> None:
        """Kill a busy worker (it may be stuck in C); an idle one exits on the socket's EOF."""
        if self.job is not None and self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.sock.close()


class _Zygote:
    """A warm, single-threaded process that forks workers on request."""
    __slots__ = ("directory", "listener", "process", "_stop", "__weakref__")

    def __init__(self) -> None:
        root = tempfile.gettempdir()
        _remove_stale_folders(root)
        # 0700: only we can connect; the owner pid in the name tells a later start whose it is
        self.directory = tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}{os.getpid()}-", dir=root)
        lock = _hold_lock(self.directory)
        address = os.path.join(self.directory, "socket")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(address)
        self.listener.listen(64)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from rlvfast.tasks.grade_pool import _zygote_main; _zygote_main()",
             address, str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, process_group=0)
        # Also when the pool is garbage-collected (an owner's local, freed as SIGTERM's
        # SystemExit unwinds) or still alive at interpreter exit.
        self._stop = weakref.finalize(self, _stop_zygote, os.getpid(), self.process, self.listener,
                                      self.directory, lock)

    def fileno(self) -> int:
        return self.listener.fileno()

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def request_worker(self) -> None:
        self.process.stdin.write(b"fork\n")
        self.process.stdin.flush()

    def accept(self) -> _Worker:
        return _Worker(self.listener.accept()[0])

    def close(self) -> None:
        """Kill the zygote and every worker (its process group), then remove the folder."""
        self._stop()


def _stop_zygote(owner_pid: int, process: subprocess.Popen, listener: socket.socket,
                 directory: str, lock: IO[bytes]) -> None:
    """SIGKILL the zygote's process group, reap the zygote, remove the folder, free the lock."""
    if os.getpid() != owner_pid:  # a fork of the owner: these are the owner's
        return
    try:
        process.stdin.close()
    except OSError:
        pass
    if process.returncode is None:  # not reaped yet, so the group id is still ours
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    listener.close()
    shutil.rmtree(directory, ignore_errors=True)
    lock.close()


def _hold_lock(directory: str) -> IO[bytes]:
    """Create and lock `directory`/lock; the lock lasts until the file closes or we die."""
    lock = open(os.path.join(directory, "lock"), "wb")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


def _remove_stale_folders(root: str) -> None:
    """Remove our uid's pool folders in `root` whose owner is dead and whose lock is free."""
    for entry in os.scandir(root):
        match = _FOLDER_RE.fullmatch(entry.name)
        if match is None or _is_alive(int(match.group(1))):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or not entry.is_dir(follow_symlinks=False):
                continue
            with open(os.path.join(entry.path, "lock"), "rb") as lock:  # none: mid-creation, keep
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)      # held: a live owner, keep
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class VerifyPool:
    """`num_workers` forked workers; `run(jobs)` grades (answer, gold) pairs, each within `timeout`."""

    def __init__(self, num_workers: int, timeout: float) -> None:
        self.num_workers = num_workers
        self.timeout = timeout
        self._zygote: _Zygote | None = None
        self._workers: list[_Worker] = []
        self._fork_times: deque[float] = deque()   # requested workers not yet connected
        self._pid = os.getpid()

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.process.pid if self._zygote is not None else None

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the connected, ready workers."""
        return [w.pid for w in self._workers if w.pid is not None]

    def close(self) -> None:
        """Kill the zygote and every worker and remove the socket folder (now, even mid-answer)."""
        if os.getpid() == self._pid:  # after a fork these belong to the parent
            for worker in self._workers:
                worker.close()
            if self._zygote is not None:
                self._zygote.close()
        self._workers, self._zygote = [], None
        self._fork_times.clear()

    def start(self, wait: bool = False) -> None:
        """Start the zygote and request the workers; `wait`: until all are ready."""
        self._ensure_workers()
        while wait and not (len(self._workers) == self.num_workers and all(w.is_ready for w in self._workers)):
            for worker, replies in self._poll(_POLL_S):
                if replies is None:
                    self._drop(worker)
                    raise RuntimeError("a grading worker exited during start-up (see stderr)")
            if self._is_broken():
                raise RuntimeError("the grading zygote failed to start (is math-verify installed? see stderr)")
            self._ensure_workers()

    def run(self, jobs: list[tuple[str, str]]) -> list[tuple[bool, str]]:
        """(correct, status) per (answer, gold): status "ok", "timeout" or "error"."""
        self._ensure_workers()
        queue = deque(range(len(jobs)))
        outcomes: dict[int, tuple[bool, str]] = {}
        while len(outcomes) < len(jobs):
            for worker in self._workers:
                if worker.is_ready and worker.job is None and queue:
                    job = queue.popleft()
                    try:
                        worker.send(job, *jobs[job])
                    except OSError:  # died while idle: the job goes back to the queue
                        queue.appendleft(job)
                        worker.job = None
            for worker, replies in self._poll(self._wait_s()):
                if replies is None:  # crashed: its job is an error
                    if worker.job is not None:
                        outcomes[worker.job] = (False, "error")
                    self._drop(worker)
                    continue
                for job, correct, status in replies:
                    if job == worker.job:
                        outcomes[job] = (bool(correct), status)
                        worker.job = None
            now = time.monotonic()
            for worker in [w for w in self._workers if w.job is not None and now - w.since > self.timeout]:
                outcomes[worker.job] = (False, "timeout")
                self._drop(worker)
            if self._is_broken():  # no worker can come: what is left is an error
                for job in set(range(len(jobs))) - set(outcomes):
                    outcomes[job] = (False, "error")
            else:
                self._ensure_workers()
        return [outcomes[job] for job in range(len(jobs))]

    def _ensure_workers(self) -> None:
        if os.getpid() != self._pid:  # inherited through fork: start our own
            self._workers, self._zygote, self._pid = [], None, os.getpid()
            self._fork_times.clear()
        if self._zygote is None:
            self._zygote = _Zygote()
        while len(self._workers) + len(self._fork_times) < self.num_workers:
            try:
                self._zygote.request_worker()
            except OSError:  # the zygote died; _is_broken() reports it
                return
            self._fork_times.append(time.monotonic())

    def _is_broken(self) -> bool:
        """Whether no worker is connected and none will come (a dead or stuck zygote). A dead
        or stuck zygote is reset either way, so the next `_ensure_workers` starts a new one."""
        zygote_failed = self._zygote is not None and not self._zygote.is_alive()
        too_slow = bool(self._fork_times) and time.monotonic() - self._fork_times[0] > START_TIMEOUT_S
        if not (zygote_failed or too_slow):
            return False
        self._zygote.close()
        self._zygote = None
        self._fork_times.clear()
        return not self._workers

    def _drop(self, worker: _Worker) -> None:
        worker.close()
        self._workers.remove(worker)

    def _wait_s(self) -> float:
        deadlines = [w.since + self.timeout for w in self._workers if w.job is not None]
        if self._fork_times:
            deadlines.append(time.monotonic() + _POLL_S)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else _POLL_S

    def _poll(self, wait_s: float) -> list[tuple[_Worker, list[list] | None]]:
        """Accept connecting workers and read replies for up to `wait_s` seconds."""
        sources: list = list(self._workers)
        if self._fork_times and self._zygote is not None:
            sources.append(self._zygote)
        readable, _, _ = select.select(sources, [], [], wait_s)
        events = []
        for source in readable:
            if source is self._zygote:
                self._workers.append(self._zygote.accept())
                self._fork_times.popleft()
            else:
                events.append((source, source.read_replies()))
        return events


def _verify(answer: str, gold: str) -> bool:
    """math-verify equivalence of two answer strings (in a worker; no signal time-outs)."""
    from math_verify import parse, verify

    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None) or parse(f"${gold}$", parsing_timeout=None)
    answer_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
    return bool(gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed, timeout_seconds=None))


def _zygote_main() -> None:
    """Warm up, then fork one worker per `fork` line on stdin until the parent leaves."""
    import logging

    address, parent_pid = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps dead workers
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice
    _verify("\\frac{1}{2}", "0.5")  # pay the sympy/latex2sympy start-up once, here
    while (num_requests := _wait_for_requests(parent_pid)) is not None:
        for _ in range(num_requests):
            _fork_worker(address)
    if os.getpgrp() == os.getpid():  # the parent left: take the workers (and us) down
        os.killpg(0, signal.SIGKILL)


def _wait_for_requests(parent_pid: int) -> int | None:
    """The number of fork requests read from stdin; None once the parent is gone."""
    while os.getppid() == parent_pid:
        readable, _, _ = select.select([0], [], [], _PARENT_CHECK_S)
        if readable:
            chunk = os.read(0, 4096)
            return chunk.count(b"\n") if chunk else None  # b"": EOF, the parent closed or died
    return None


def _fork_worker(address: str) -> None:
    """Fork a worker that serves `address` and dies with this process."""
    zygote_pid = os.getpid()
    if os.fork() != 0:
        return
    try:
        _die_with_parent(zygote_pid)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # stdin is the zygote's
        _serve(address)
    except BaseException:  # noqa: BLE001 - report, then leave without the zygote's cleanup
        traceback.print_exc()
    finally:
        os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """Get SIGKILL when the parent exits (Linux; a no-op elsewhere); exit now if it has.

    Linux sends it when the parent *thread* that forked us exits: use it only in a child of
    a single-threaded process. The `getppid` check closes the race with a parent that died
    before the signal was set."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG, SIGKILL) failed")
    if os.getppid() != parent_pid:
        os._exit(0)


def _serve(address: str) -> None:
    """Worker loop: `[job, answer, gold]` lines in, `[job, correct, status]` lines out."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        sock.sendall((json.dumps(["ready", os.getpid()]) + "\n").encode())
        for line in sock.makefile("rb"):
            job, answer, gold = json.loads(line)
            try:
                reply = [job, _verify(answer, gold), "ok"]
            except Exception:  # a parser bug on one answer must not kill the worker
                reply = [job, False, "error"]
            sock.sendall((json.dumps(reply) + "\n").encode())
