"""Tasks: the problems and how a solution is judged.

`problems` (Problem records, MATH / GSM8K / AIME / AMC loaders), `synthetic` (the built-in
arithmetic task), `grading` (a solution's answer against the gold, with hard time-outs) and
`grade_pool` (the math-verify worker processes behind it). What an answer is and when two
are the same lives below, in `rlvfast.answers`, shared with the sampler and voting.
"""
