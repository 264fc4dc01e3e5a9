"""`rlvfast.voting`, the documented import path of the voting functions; they live in
`rlvfast.eval.voting`."""
from rlvfast.eval.voting import (best_index, best_of_n, majority_index, majority_vote, normalize_answer, pass_at_k,
                                 weighted_index, weighted_vote)

__all__ = ["best_index", "best_of_n", "majority_index", "majority_vote", "normalize_answer", "pass_at_k",
           "weighted_index", "weighted_vote"]
