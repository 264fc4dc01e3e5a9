"""What a solution's answer is, and when two answers are the same: the one home of both rules.

Extraction, `extract_answer(text)`: the content of the last complete `\\boxed{...}` (or
`\\fbox{...}`, nested braces allowed), else a GSM8K `#### N` line, else the last plain number.
A box is the solution's declared answer, so when one was opened but cannot be read, there is
no answer (never the last number, which would be a digit from inside the box): an empty box,
a box still open at the end of the text (`\\boxed{\\frac{1}{2}`), or, for a text longer than
`MAX_TEXT_CHARS` (only that tail is scanned), a box command before the tail and no complete
box inside it. An earlier complete box still counts when a later one is left open.

Normalization, `normalize_answer(answer)`: the canonical answer key. Grading's fast path
calls two answers correct when their keys are equal, and voting groups samples by key, so
the rule is: **equal keys only for mathematically equal answers**. Each rewrite keeps the
value: `$`, LaTeX spacing (`\\left`, `\\,`, ...), whitespace, a trailing period, a
whole-answer `\\boxed{}`/`\\fbox{}`/`\\text{}` (up to `MAX_UNWRAPS` deep), a leading `+`,
leading zeros, thousands separators (`1,000`, `-1,234.5`); exact rationals get one
spelling: "0.5" == "1/2" == "\\frac{1}{2}" -> "1/2", "56.0" -> "56". Integers are
canonicalized as strings (any length); a decimal or fraction longer than `MAX_NUMBER_CHARS`
keeps its spelling, so no `int()`/`Fraction()` of a huge string raises.

Not here: equivalence beyond the key (math-verify, `rlvfast.tasks.grading`), choosing among
answers (`rlvfast.eval.voting`).
"""
from __future__ import annotations

import re
from fractions import Fraction

MAX_TEXT_CHARS = 200_000  # longer solutions: only the tail is searched (the answer is at the end)
# Below 640, the smallest limit `sys.set_int_max_str_digits` accepts: no int()/str() of a
# number this long raises, whatever the interpreter's limit (4300 digits by default).
MAX_NUMBER_CHARS = 600
MAX_UNWRAPS = 8  # whole-answer wrappers peeled: `\\boxed{\\boxed{5}}` -> "5"; deeper ones keep the rest

# One pass over braces: box openers, escaped braces (literal, skipped) and plain braces.
_BRACE_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")
_BOX_COMMAND_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOXED_BARE_RE = re.compile(r"\\boxed\s+([^\s${}]+)")
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_NUMBER_RE = re.compile(r"(?<!\w)-?\d+(?:,\d{3})*(?:\.\d+)?")  # "4-3" -> "4", "3"; "=-3" -> "-3"

_LATEX_NOISE = ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\ ")
_TEXT_WRAP_RE = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}$")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_INT_RE = re.compile(r"^([+-]?)(\d+)$")
_CANONICAL_INT_RE = re.compile(r"^(?:0|-?[1-9]\d*)$")
_DECIMAL_RE = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+)$")
_FRACTION_RE = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$|^([+-]?\d+)/([+-]?\d+)$")


# --- extraction ---

def _scan_boxes(text: str) -> tuple[str | None, bool]:
    """(content of the last complete outermost box or None, whether a box is still open)."""
    stack: list[int | None] = []  # per open brace: content start if it opened a box, else None
    num_open_boxes = 0
    last: str | None = None
    for match in _BRACE_TOKEN_RE.finditer(text):
        token = match.group()
        if token[-1] == "{" and token != "\\{":
            is_outer_box = token[0] == "\\" and num_open_boxes == 0
            stack.append(match.end() if is_outer_box else None)
            num_open_boxes += is_outer_box
        elif token == "}" and stack:
            start = stack.pop()
            if start is not None:
                last = text[start:match.start()]
                num_open_boxes -= 1
    return last, num_open_boxes > 0


def last_boxed(text: str) -> str | None:
    """Content of the last complete outermost `\\boxed{...}`/`\\fbox{...}` (or of a brace-less
    `\\boxed 7`), stripped; None when there is none or the only box is left open."""
    last, is_open = _scan_boxes(text)
    if last is None and not is_open:
        bare = _BOXED_BARE_RE.findall(text)
        last = bare[-1] if bare else None
    return last.strip() if last is not None else None


def extract_answer(text: str | None) -> str | None:
    """The final answer of a solution: last boxed, else `#### N`, else the last number;
    None when there is none or a box was opened that cannot be read (see the module doc)."""
    if not isinstance(text, str) or not text.strip():
        return None
    num_cut = len(text) - MAX_TEXT_CHARS
    tail = text[num_cut:] if num_cut > 0 else text
    boxed = last_boxed(tail)
    if boxed:
        return boxed
    if boxed is not None or _BOX_COMMAND_RE.search(tail) or _is_box_cut_off(text, num_cut):
        return None  # an empty, unclosed or unreadable box: no answer, not a number out of it
    hashes = [m.strip() for m in _GSM8K_RE.findall(tail)]
    if hashes and hashes[-1]:
        return hashes[-1]
    numbers = _NUMBER_RE.findall(tail)
    return numbers[-1] if numbers else None


def _is_box_cut_off(text: str, num_cut: int) -> bool:
    """Whether a box command starts in the first `num_cut` characters (the part not scanned)."""
    if num_cut <= 0:
        return False
    match = _BOX_COMMAND_RE.search(text)
    return match is not None and match.start() < num_cut


# --- normalization ---

def normalize_answer(answer: str | int | None) -> str | None:
    """The canonical answer key (see the module doc); None: no answer (None, empty, an open box)."""
    if answer is None:
        return None
    s = _clean(str(answer))
    for _ in range(MAX_UNWRAPS):  # each unwrap scans s: no unbounded peeling of 25,000 boxes
        if not s or (inner := _unwrap(s)) is None:
            break
        s = _clean(inner)
    s = s.lstrip("+")
    if not s:
        return None
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    if (integer := _INT_RE.match(s)) is not None:
        return _int_key(integer.group(1), integer.group(2))
    return _rational_key(s) or s


def is_int_key(key: str | None) -> bool:
    """Whether a `normalize_answer` key is an integer (two different ones differ in value)."""
    return key is not None and _CANONICAL_INT_RE.match(key) is not None


def _clean(s: str) -> str:
    """`$`, LaTeX spacing, `\\dfrac`/`\\tfrac`, whitespace and a trailing period removed."""
    s = s.strip().strip("$").strip()
    for noise in _LATEX_NOISE:
        s = s.replace(noise, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return "".join(s.split()).rstrip(".")


def _unwrap(s: str) -> str | None:
    """The inside of a whole-answer `\\text{...}` or box; "" for a box left open; else None."""
    if (wrapped := _TEXT_WRAP_RE.match(s)) is not None:
        return wrapped.group(1)
    opener = _BRACE_TOKEN_RE.match(s)
    if opener is None or not opener.group().startswith(("\\boxed", "\\fbox")):
        return None
    depth = 1
    for match in _BRACE_TOKEN_RE.finditer(s, opener.end()):
        token = match.group()
        if token in ("\\{", "\\}"):
            continue
        depth += 1 if token[-1] == "{" else -1
        if depth == 0:
            return s[opener.end():match.start()] if match.end() == len(s) else None
    return ""  # an open box is no answer


def _int_key(sign: str, digits: str) -> str:
    """"-007" -> "-7", "-0" -> "0", by string operations (no length limit)."""
    digits = digits.lstrip("0") or "0"
    return "-" + digits if sign == "-" and digits != "0" else digits


def _rational_key(s: str) -> str | None:
    """"n" or "n/d" in lowest terms for a decimal or simple fraction, else None."""
    if len(s) > MAX_NUMBER_CHARS:
        return None
    if _DECIMAL_RE.match(s):
        value = Fraction(s)
    elif (match := _FRACTION_RE.match(s)) is not None:
        sign, num, den = match.groups()[:3] if match.group(2) is not None else ("", *match.groups()[3:])
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den)) * (-1 if sign == "-" else 1)
    else:
        return None
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
