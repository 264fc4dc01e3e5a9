"""Answer grading: extract the final answer from a solution and decide if it equals the gold.

`extract_answer(text)` takes the last `\\boxed{...}` (or `\\fbox{...}`, nested braces
allowed), else a GSM8K `#### N` line, else the last plain number. `is_correct(text, gold)`
and `Grader.grade/grade_batch` decide equivalence in two tiers:

1. In-process fast path, no IPC: answers equal after `normalize_answer` are correct; two
   different integers (the synthetic task, GSM8K, AIME) are wrong.
2. Everything else goes to math-verify in a pool of worker processes. sympy can hang for
   minutes (`\\boxed{9^{9^{9}}}`) inside C code that math-verify's `signal.alarm` timeouts
   cannot interrupt (and signals only work in a main thread), so the parent enforces a hard
   wall-clock limit per answer by killing the worker and starting a replacement. A time-out
   grades wrong with status "timeout".

Workers are plain `python -c` children (fork+exec, so no fork of a threaded torch process),
not multiprocessing spawn/forkserver children: those re-import the parent's `__main__`
(for `python -m rlvfast.train`: torch and transformers, seconds and hundreds of MB per
worker). They start once, lazily, on the first answer that needs math-verify.
This module does not load datasets (`rlvfast.data`) or choose answers (`rlvfast.voting`).
"""
from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

MAX_TEXT_CHARS = 200_000   # longer solutions: only the tail is searched (the answer is at the end)
MAX_ANSWER_CHARS = 1_000   # longer extracted answers grade wrong without math-verify
START_TIMEOUT_S = 60.0     # a worker that is not ready by then counts as broken

# One pass over braces: box openers, escaped braces (literal, skipped) and plain braces.
_BRACE_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")
_BOXED_BARE_RE = re.compile(r"\\boxed\s+([^\s${}]+)")
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_NUMBER_RE = re.compile(r"(?<!\w)-?\d+(?:,\d{3})*(?:\.\d+)?")  # "4-3" -> "4", "3"; "=-3" -> "-3"
_INT_RE = re.compile(r"^-?\d+$")
_DECIMAL_RE = re.compile(r"^-?(?:\d+\.\d*|\.\d+)$")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_TEXT_WRAP_RE = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}$")
_LATEX_NOISE = ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\ ")


def last_boxed(text: str) -> str | None:
    """Content of the last complete outermost `\\boxed{...}`/`\\fbox{...}`, or None."""
    stack: list[int | None] = []  # per open brace: content start if it opened a box, else None
    last: str | None = None
    for match in _BRACE_TOKEN_RE.finditer(text):
        token = match.group()
        if token[-1] == "{" and token != "\\{":
            is_outer_box = token[0] == "\\" and all(start is None for start in stack)
            stack.append(match.end() if is_outer_box else None)
        elif token == "}" and stack:
            start = stack.pop()
            if start is not None:
                last = text[start:match.start()]
    if last is None:
        bare = _BOXED_BARE_RE.findall(text)
        last = bare[-1] if bare else None
    return last.strip() if last is not None else None


def extract_answer(text: str | None) -> str | None:
    """The final answer of a solution: last boxed, else `#### N`, else the last number."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = text[-MAX_TEXT_CHARS:]
    boxed = last_boxed(text)
    if boxed:
        return boxed
    hashes = [m.strip() for m in _GSM8K_RE.findall(text)]
    if hashes and hashes[-1]:
        return hashes[-1]
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str) -> str:
    """A canonical string for fast comparison and voting (only rewrites that keep the value)."""
    s = answer.strip().strip("$").strip()
    for noise in _LATEX_NOISE:
        s = s.replace(noise, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = "".join(s.split()).rstrip(".")
    if (wrapped := _TEXT_WRAP_RE.match(s)) is not None:
        s = wrapped.group(1)
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    s = s.lstrip("+")
    if _INT_RE.match(s):
        s = str(int(s)) if len(s) < 4000 else s  # "025" -> "25", "-0" -> "0"
    return s


def _fast_decide(answer: str, gold: str) -> bool | None:
    """True/False when cheap string/number rules settle it, None when math-verify must."""
    a, g = normalize_answer(answer), normalize_answer(gold)
    if a == g:
        return bool(a)
    if _INT_RE.match(a) and _INT_RE.match(g):
        return False
    if _DECIMAL_RE.match(a) or _DECIMAL_RE.match(g):
        numeric = (_INT_RE.match(a) or _DECIMAL_RE.match(a)) and (_INT_RE.match(g) or _DECIMAL_RE.match(g))
        if numeric and max(len(a), len(g)) < 100 and Fraction(a) == Fraction(g):
            return True
    return None


@dataclass(frozen=True, slots=True)
class GradeResult:
    correct: bool
    answer: str | None   # the extracted answer (None when there was none)
    status: str          # "ok" | "timeout" | "error"


class _Worker:
    """One math-verify child process speaking JSON lines over its stdin/stdout."""
    __slots__ = ("process", "buffer", "is_ready", "job", "since")

    def __init__(self) -> None:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from rlvfast.grading import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self.buffer = b""
        self.is_ready = False
        self.job: int | None = None   # index into the current batch's jobs
        self.since = time.monotonic()  # start-up time, then the current job's dispatch time

    def fileno(self) -> int:
        return self.process.stdout.fileno()

    def send(self, job: int, answer: str, gold: str) -> None:
        self.process.stdin.write((json.dumps([job, answer, gold]) + "\n").encode())
        self.process.stdin.flush()
        self.job, self.since = job, time.monotonic()

    def read_messages(self) -> list | None:
        """Complete messages available now; None at EOF (the worker died)."""
        chunk = os.read(self.fileno(), 65536)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        messages = []
        for line in lines:
            try:
                messages.append(json.loads(line))
            except ValueError:  # not ours (the worker sends its own stdout to stderr)
                continue
        return messages

    def kill(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.process.kill()
        self.process.wait()


class Grader:
    """Grades solutions against gold answers with a hard per-answer wall-clock limit.

    Thread-safe (one batch at a time through the pool; the fast path needs no lock) and
    signal-free in the caller, so it works from worker threads and in several processes
    (each process makes its own workers). Use as a context manager or call `close()`.
    """

    def __init__(self, timeout: float = 5.0, num_workers: int = 2, cache_size: int = 65536,
                 use_fast_path: bool = True) -> None:
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"Grader.timeout must be a number > 0 seconds, got {timeout!r}")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"Grader.num_workers must be an int >= 1, got {num_workers!r}")
        self.timeout = float(timeout)
        self.num_workers = num_workers
        self.cache_size = cache_size
        self.use_fast_path = use_fast_path  # False: every answer goes to math-verify (tests, benchmarks)
        self.num_graded = 0
        self.num_fast = 0        # decided in-process
        self.num_timeouts = 0
        self.num_errors = 0
        self._workers: list[_Worker] = []
        self._cache: dict[tuple[str, str], tuple[bool, str]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        _LIVE_GRADERS.add(self)

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, wait: bool = False) -> None:
        """Start the workers now (not on the first math-verify answer); `wait`: until ready."""
        with self._lock:
            self._ensure_workers()
            while wait and not all(w.is_ready for w in self._workers):
                starting = [w for w in self._workers if not w.is_ready]
                wait_s = max(0.0, min(w.since for w in starting) + START_TIMEOUT_S - time.monotonic())
                readable, _, _ = select.select(starting, [], [], wait_s)
                if not readable:
                    raise RuntimeError(f"grading workers not ready after {START_TIMEOUT_S} s")
                for worker in readable:
                    messages = worker.read_messages()
                    if messages is None:
                        raise RuntimeError("a grading worker exited during start-up (is math-verify "
                                           "installed? its error is on stderr)")
                    worker.is_ready = worker.is_ready or "ready" in messages

    def close(self) -> None:
        """Kill the workers (a later grade starts new ones)."""
        is_locked = self._lock.acquire(timeout=2.0)  # at exit a daemon thread may hold it
        try:
            if os.getpid() == self._pid:
                for worker in self._workers:
                    worker.kill()
            self._workers = []
        finally:
            if is_locked:
                self._lock.release()

    def grade(self, text: str | None, gold: str | int | float | None) -> GradeResult:
        return self.grade_batch([text], [gold])[0]

    def grade_batch(self, texts: list[str | None], golds: list) -> list[GradeResult]:
        """Grade many solutions; slow answers time out one by one, in parallel."""
        if len(texts) != len(golds):
            raise ValueError(f"grade_batch needs as many golds as texts, got {len(texts)} texts "
                             f"and {len(golds)} golds")
        results: list[GradeResult | None] = [None] * len(texts)
        pending: dict[tuple[str, str], list[int]] = {}
        for i, (text, gold) in enumerate(zip(texts, golds)):
            answer = extract_answer(text)
            gold_text = _gold_text(gold)
            if gold_text is None:
                results[i] = GradeResult(False, answer, "error")
            elif answer is None or len(answer) > MAX_ANSWER_CHARS:
                results[i] = GradeResult(False, answer, "ok")
            elif self.use_fast_path and (decided := _fast_decide(answer, gold_text)) is not None:
                results[i] = GradeResult(decided, answer, "ok")
                self.num_fast += 1
            elif (cached := self._cache.get((answer, gold_text))) is not None:
                results[i] = GradeResult(cached[0], answer, cached[1])
            else:
                pending.setdefault((answer, gold_text), []).append(i)
        with self._lock:
            if pending:
                for key, outcome in zip(pending, self._run_jobs(list(pending))):
                    if len(self._cache) >= self.cache_size:  # FIFO eviction
                        self._cache.pop(next(iter(self._cache)))
                    self._cache[key] = outcome
                    for i in pending[key]:
                        results[i] = GradeResult(outcome[0], key[0], outcome[1])
            self.num_graded += len(results)
            self.num_timeouts += sum(r.status == "timeout" for r in results)
            self.num_errors += sum(r.status == "error" for r in results)
        return results  # type: ignore[return-value]

    # --- the worker pool (called with self._lock held) ---

    def _ensure_workers(self) -> None:
        if os.getpid() != self._pid:  # inherited through fork: those pipes belong to the parent
            self._workers, self._pid = [], os.getpid()
        self._workers = [w for w in self._workers if w.process.poll() is None]
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker())

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker()

    def _run_jobs(self, jobs: list[tuple[str, str]]) -> list[tuple[bool, str]]:
        """(correct, status) per (answer, gold) job, at most `timeout` s of work each."""
        self._ensure_workers()
        queue = deque(range(len(jobs)))
        outcomes: list[tuple[bool, str] | None] = [None] * len(jobs)
        num_left = len(jobs)

        def finish(job: int, outcome: tuple[bool, str]) -> None:
            nonlocal num_left
            outcomes[job] = outcome
            num_left -= 1

        while num_left:
            for worker in self._workers:
                if worker.is_ready and worker.job is None and queue:
                    job = queue.popleft()
                    try:
                        worker.send(job, *jobs[job])
                    except OSError:  # died while idle: retry the job on a fresh worker
                        queue.appendleft(job)
                        self._replace(worker)
            now = time.monotonic()
            deadlines = [w.since + (self.timeout if w.is_ready else START_TIMEOUT_S)
                         for w in self._workers if w.job is not None or not w.is_ready]
            wait_s = max(0.0, min(deadlines) - now) if deadlines else 0.0
            readable, _, _ = select.select(self._workers, [], [], wait_s)
            for worker in readable:
                messages = worker.read_messages()
                if messages is None:  # crashed: its job is an error, a start-up crash fails the queue
                    if worker.job is not None:
                        finish(worker.job, (False, "error"))
                    elif not worker.is_ready:
                        while queue:
                            finish(queue.popleft(), (False, "error"))
                    self._replace(worker)
                    continue
                for message in messages:
                    if message == "ready":
                        worker.is_ready = True
                    else:
                        job, correct, status = message
                        if job == worker.job:
                            finish(job, (bool(correct), status))
                            worker.job = None
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.job is not None and now - worker.since > self.timeout:
                    finish(worker.job, (False, "timeout"))
                    self._replace(worker)
                elif not worker.is_ready and now - worker.since > START_TIMEOUT_S:
                    while queue:
                        finish(queue.popleft(), (False, "error"))
                    self._replace(worker)
        return outcomes  # type: ignore[return-value]


def _gold_text(gold) -> str | None:
    if isinstance(gold, bool) or gold is None:
        return None
    if isinstance(gold, float) and gold.is_integer():
        gold = int(gold)
    text = str(gold).strip()
    return text or None


def _verify(answer: str, gold: str) -> bool:
    """math-verify equivalence of two answer strings (runs inside a worker)."""
    from math_verify import parse, verify

    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None) or parse(f"${gold}$", parsing_timeout=None)
    answer_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
    return bool(gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed, timeout_seconds=None))


def _worker_main() -> None:
    """Worker loop: read `[job, answer, gold]` lines, write `[job, correct, status]` lines."""
    import logging
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout disabled" notice
    out = os.fdopen(os.dup(1), "w")  # the protocol channel; stray prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _verify("1", "1")  # pay sympy/latex2sympy start-up before reporting ready
    out.write('"ready"\n')
    out.flush()
    for line in sys.stdin:
        job, answer, gold = json.loads(line)
        try:
            reply = [job, _verify(answer, gold), "ok"]
        except Exception:  # a parser bug on one answer must not kill the worker
            reply = [job, False, "error"]
        out.write(json.dumps(reply) + "\n")
        out.flush()


_LIVE_GRADERS: weakref.WeakSet[Grader] = weakref.WeakSet()
_DEFAULT: Grader | None = None
_DEFAULT_LOCK = threading.Lock()


def default_grader() -> Grader:
    """The process-wide Grader behind `is_correct` (made on first use, closed at exit)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._pid != os.getpid():
            _DEFAULT = Grader()
        return _DEFAULT


def is_correct(text: str | None, gold: str | int | float | None) -> bool:
    """Whether the solution's final answer equals the gold (a time-out counts as wrong)."""
    return default_grader().grade(text, gold).correct


@atexit.register
def _close_all() -> None:
    for grader in list(_LIVE_GRADERS):
        grader.close()
