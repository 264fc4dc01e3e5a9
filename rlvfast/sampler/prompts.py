"""Prompt texts: the problem prompt, the verification prompt, and their token ids.

`format_prompt(tokenizer, problem)`: for a tokenizer with a chat template, the problem (plus
an instruction to box the final answer) as one user turn followed by the assistant header;
for a plain model (no chat template, e.g. the tiny char model) `f"{problem}\n"`, the format
the tiny model is warm-started on.

`build_verify_prompt(tokenizer, question)`: the text that follows a solution before P("Yes")
is read. With a chat template it is rendered by the tokenizer's own template, never
hard-coded: a conversation [user: problem, assistant: SENTINEL, user: question] is rendered
with the generation prompt, and the verification prompt is everything after SENTINEL, so it
holds the end-of-turn the template puts after the assistant message, the new user turn and
the assistant header. Without a template: "\nIs the solution likely to result in the
correct answer (Yes/No)?\n" (the paper's prompt for plain models).

Not here: tokenizing solutions (the sampler keeps sampled token ids as they are).
"""
from __future__ import annotations

VERIFY_QUESTION = "Is this solution correct (Yes/No)?"
PLAIN_VERIFY_PROMPT = "\nIs the solution likely to result in the correct answer (Yes/No)?\n"
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_SENTINEL = "<<rlvfast solution sentinel>>"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, problem_text: str) -> str:
    """The generation prompt for one problem (see the module docstring)."""
    if not has_chat_template(tokenizer):
        return f"{problem_text}\n"
    messages = [{"role": "user", "content": f"{problem_text}\n{BOXED_INSTRUCTION}"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def build_verify_prompt(tokenizer, question: str | None = None) -> str:
    """The text between a solution and the position where P("Yes") is read."""
    if not has_chat_template(tokenizer):
        return PLAIN_VERIFY_PROMPT if question is None else f"\n{question}\n"
    messages = [{"role": "user", "content": "<<problem>>"}, {"role": "assistant", "content": _SENTINEL},
                {"role": "user", "content": question or VERIFY_QUESTION}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    cut = text.rfind(_SENTINEL)
    if cut < 0:
        raise ValueError("the tokenizer's chat template drops the assistant message; "
                         "pass verify_prompt=... to Sampler explicitly")
    return text[cut + len(_SENTINEL):]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt ids as HF `generate` users get them (special tokens added), but a BOS that the
    chat template already wrote is not doubled."""
    ids = tokenizer.encode(prompt, add_special_tokens=True)
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids
