"""Problem records and loaders (placeholder: the full loaders come with issue 2)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Problem:
    """One problem: a stable id, the problem text and the gold answer (a string)."""
    id: str
    problem: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
