"""Answer extraction and grading: the fast path, math-verify in the worker pool, time-outs."""
import json
import os
import threading
import time

import pytest

from conftest import shared_path
from rlvfast.tasks.grading import GradeResult, Grader, extract_answer, is_correct, last_boxed, normalize_answer

TIMEOUT_S = 2.0
# Margin over the time-out for the kill itself and the select wake-up (a 2-core shared CI
# machine). A real hang runs for minutes, so the bound still catches a broken time-out.
MARGIN_S = 3.0
HANGS = [
    r"\boxed{\dfrac{5^{(5^{(5^{(5^5)})} - 4)} - 5}{16}}",
    r"\boxed{9^{9^{9}}}",
    r"\boxed{10^{10^{10}}}",
]


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout=TIMEOUT_S, num_workers=2) as grader:
        grader.start(wait=True)
        yield grader


def _math500():
    with shared_path("data", "math500.jsonl").open() as file:
        return [json.loads(line) for line in file]


# --- extraction ---

@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{a}{\\sqrt{b+1}}} done", "\\frac{a}{\\sqrt{b+1}}"),    # nested braces
    ("first \\boxed{1} then \\boxed{2}.", "2"),                              # the last box wins
    ("\\fbox{\\{1,2\\}}", "\\{1,2\\}"),                                      # \fbox, escaped braces
    ("\\boxed{3} and a truncated \\boxed{\\frac{1", "3"),                    # unclosed last box
    ("so \\boxed{\\frac{1}{2}", None),                                      # unclosed only box: no answer
    ("\\boxed{" + "1+" * 100_000 + "2} done", None),                         # opener cut off by the tail window
    ("The answer is $\\boxed 7$.", "7"),                                     # \boxed without braces
    ("7+8=15\n15-3=12\n\\boxed{-10}", "-10"),                               # synthetic, negative
    ("She pays 3 * 4 = 12 dollars.\n#### 1,234", "1,234"),                   # GSM8K
    ("x = 4-3", "3"),                                                        # a minus between numbers
    ("it is =-3 degrees", "-3"),                                             # a negative number
    ("no numbers here", None),
    ("", None),
    (None, None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_outermost_of_nested_boxes():
    assert last_boxed("\\boxed{\\boxed{5}+1}") == "\\boxed{5}+1"


@pytest.mark.parametrize("raw, expected", [
    ("$\\dfrac{1}{2}$", "1/2"), ("0.50", "1/2"), ("\\boxed{7}", "7"), ("1,000", "1000"), ("025", "25"), ("+5", "5"),
    ("\\text{Evelyn}", "Evelyn"), ("\\left( 3, \\pi \\right)", "(3,\\pi)"), ("10,\\!080", "10080"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


# --- correctness ---

def test_math500_answers_grade_correct_against_their_own_solutions(grader):
    rows = _math500()
    results = grader.grade_batch([row["solution"] for row in rows], [row["answer"] for row in rows])
    wrong = [(row["unique_id"], r) for row, r in zip(rows, results) if not r.correct]
    assert wrong == [] and len(results) == 500


def test_math500_answers_through_math_verify():
    # The fast path settles all 500 above; here every 5th goes through math-verify in the pool.
    rows = _math500()[::5]
    with Grader(timeout=TIMEOUT_S, num_workers=2, use_fast_path=False) as slow:
        results = slow.grade_batch([row["solution"] for row in rows], [row["answer"] for row in rows])
        assert slow.num_fast == 0
    wrong = [(row["answer"], r) for row, r in zip(rows, results) if not (r.correct and r.status == "ok")]
    assert wrong == []


def test_shifted_numeric_answers_grade_wrong(grader):
    rows = [row for row in _math500() if row["answer"].lstrip("-").isdigit()]
    assert len(rows) > 100
    results = grader.grade_batch([f"\\boxed{{{int(row['answer']) + 1}}}" for row in rows],
                                 [row["answer"] for row in rows])
    assert not any(r.correct for r in results)


@pytest.mark.parametrize("text, gold, expected", [
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac34", True),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\boxed{\\frac{1}{3}}", "0.5", False),
    ("\\boxed{27.0}", 27.0, True),            # an AMC float gold
    ("#### 1,234", "1234", True),              # GSM8K
    ("\\boxed{025}", "25", True),              # AIME leading zeros
    ("\\boxed{-10}", "-10", True),             # synthetic
    ("\\boxed{-10}", "10", False),
])
def test_grade_equivalences(grader, text, gold, expected):
    result = grader.grade(text, gold)
    assert (result.correct, result.status) == (expected, "ok")


def test_fast_path_decides_integers_without_workers():
    with Grader(timeout=TIMEOUT_S) as fresh:
        results = fresh.grade_batch(["\\boxed{56}", "\\boxed{57}", "1+2=3", "\\boxed{\\frac{1}{2}}", "\\boxed{56.0}"],
                                    ["56", "56", "3", "0.5", "57"])
        assert [r.correct for r in results] == [True, False, True, True, False]
        assert fresh.num_fast == 5 and fresh._pool._zygote is None  # no process was started


@pytest.mark.parametrize("text, gold, status", [
    (None, "3", "ok"), ("", "3", "ok"), ("   ", "3", "ok"),
    ("\\boxed{3}", None, "error"), ("\\boxed{3}", "", "error"),           # no gold: a caller bug
    ("x" * 2_000_000 + " \\boxed{4}", "3", "ok"),                           # only the tail is read
    ("\\boxed{" + "1+" * 5_000 + "1}", "3", "ok"),                          # over MAX_ANSWER_CHARS
    ("\\boxed{" * 50_000, "3", "ok"),                                       # unclosed braces
    ("so \\boxed{\\frac{1}{2}", "2", "ok"),                                  # unclosed box, not its last digit
])
def test_degenerate_inputs_grade_wrong_without_raising(grader, text, gold, status):
    result = grader.grade(text, gold)
    assert (result.correct, result.status) == (False, status)


def test_module_level_is_correct():
    assert is_correct("7+8=15\n\\boxed{15}", "15") is True
    assert is_correct("\\boxed{14}", "15") is False
    assert is_correct(None, "15") is False


# --- time-outs and concurrency ---

@pytest.mark.parametrize("hang", HANGS)
def test_hanging_answer_times_out_within_limit_and_grader_recovers(grader, hang):
    # Runs right after the previous hang's kill: the replacement is a fork of the warm zygote.
    grader.start(wait=True)  # every worker connected, so each has a pid to compare (not None)
    num_timeouts = grader.num_timeouts
    pids_before = {w.pid for w in grader._pool._workers}
    start = time.monotonic()
    result = grader.grade(hang, "3")
    elapsed = time.monotonic() - start
    assert result == GradeResult(False, hang[len("\\boxed{"):-1], "timeout")
    assert elapsed < TIMEOUT_S + MARGIN_S, elapsed
    assert grader.num_timeouts == num_timeouts + 1
    assert grader.grade("\\boxed{2\\sqrt{2}}", "\\sqrt{8}") == GradeResult(True, "2\\sqrt{2}", "ok")
    killed = pids_before - {w.pid for w in grader._pool._workers}
    assert len(killed) == 1 and _is_gone(killed.pop())


def _is_gone(pid: int, wait_s: float = 5.0) -> bool:
    """Whether the process has exited (and been reaped) within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_close_stops_every_process():
    grader = Grader(timeout=TIMEOUT_S, num_workers=2)
    grader.start(wait=True)
    zygote, pids = grader._pool._zygote.process, [w.pid for w in grader._pool._workers]
    assert len(pids) == 2
    grader.close()
    assert zygote.poll() is not None and all(_is_gone(pid) for pid in pids)
    assert grader.grade("\\boxed{2\\sqrt{2}}", "\\sqrt{8}").correct  # a later grade starts afresh
    grader.close()


def test_slow_answers_do_not_serialize_the_batch():
    # 2 hangs + 8 answers that need math-verify on 3 workers: the hangs time out side by side
    # while the third worker grades the rest, so the batch takes about one time-out (2 s);
    # one worker at a time would take two time-outs (4 s).
    fast = [(f"\\boxed{{{k}\\sqrt{{2}}}}", f"\\sqrt{{{2 * k * k}}}") for k in range(1, 9)]  # not the fast path
    texts = HANGS[1:] + [text for text, _ in fast]
    golds = ["3", "3"] + [gold for _, gold in fast]
    with Grader(timeout=TIMEOUT_S, num_workers=3) as fresh:
        fresh.start(wait=True)
        start = time.monotonic()
        results = fresh.grade_batch(texts, golds)
        elapsed = time.monotonic() - start
    assert [r.status for r in results[:2]] == ["timeout", "timeout"] and not any(r.correct for r in results[:2])
    assert all(r.correct and r.status == "ok" for r in results[2:])
    assert elapsed < 1.75 * TIMEOUT_S, elapsed


def test_grading_from_a_thread(grader):
    results = []
    thread = threading.Thread(target=lambda: results.append(
        grader.grade_batch(["\\boxed{\\sqrt{8}}", "\\boxed{0.3}"], ["2\\sqrt{2}", "\\frac13"])))
    thread.start()
    thread.join(timeout=60)
    assert [r.correct for r in results[0]] == [True, False]


def test_concurrent_threads_share_one_grader(grader):
    outputs = {}

    def work(k: int) -> None:
        outputs[k] = grader.grade(f"\\boxed{{{k}\\sqrt{{2}}}}", f"\\sqrt{{{2 * k * k}}}").correct

    threads = [threading.Thread(target=work, args=(k,)) for k in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outputs == {1: True, 2: True, 3: True, 4: True}


def _grade_in_child(queue) -> None:
    queue.put(is_correct("\\boxed{\\sqrt{12}}", "2\\sqrt{3}"))


def test_grading_in_a_spawned_process():
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_grade_in_child, args=(queue,))
    process.start()
    assert queue.get(timeout=120) is True
    process.join(timeout=30)
    assert process.exitcode == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout"):
        Grader(timeout=0)
    with pytest.raises(ValueError, match="num_workers"):
        Grader(num_workers=0)
    with pytest.raises(ValueError, match="2 texts and 1 golds"):
        Grader().grade_batch(["a", "b"], ["1"])


def test_broken_worker_start_grades_error_instead_of_hanging(monkeypatch):
    import rlvfast.tasks.grade_pool as grade_pool

    monkeypatch.setattr(grade_pool.sys, "executable", "/bin/false")  # the zygote exits at once
    with Grader(timeout=TIMEOUT_S) as broken:
        results = broken.grade_batch(["\\boxed{2\\sqrt{2}}", "\\boxed{7}"], ["\\sqrt{8}", "7"])
        assert [(r.correct, r.status) for r in results] == [(False, "error"), (True, "ok")]
        assert broken.num_errors == 1
        with pytest.raises(RuntimeError, match="zygote failed to start"):
            broken.start(wait=True)
