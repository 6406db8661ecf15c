"""Supervised fine-tuning (instruction tuning) data: records -> token ids and labels.

A record is a mapping with `instruction`, an optional `input` and `output`. A template
turns the first two into a prompt; the response is the `output` (and the tokenizer's end
of sequence). `SFTCollator` tokenizes both with a tokenizer you supply and, with
`mask_prompt=True`, sets the labels of the prompt's positions to -100, so that the loss
counts only the response:

    collate = SFTCollator(tokenizer, template="alpaca", mask_prompt=True, max_len=512)
    batch = collate([{"instruction": "Add.", "input": "2 3", "output": "5"}, ...])
    batch["input_ids"], batch["labels"], batch["attention_mask"]     # LongTensor [B, T]

Labels line up with input_ids (transformers' convention: the loss shifts them, logits at
position t predict labels at t + 1); padding is on the right, with label -100 and
attention 0. The prompt and the response are tokenized apart, so a token never spans
both. A tokenizer is anything with `encode(text) -> list[int]` (a transformers tokenizer
too: special tokens are not added) or a plain callable; its `eos_token_id` and
`pad_token_id` are used when present, else pass `eos_id` and `pad_id`.

A finetune plan's `sft(template=..., mask_prompt=..., max_len=...)` directive configures
one: `SFTCollator.from_plan(program.plan("Name"), tokenizer)`.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import torch

IGNORE = -100

ALPACA = ("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.\n\n"
          "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:\n")
TEMPLATES: dict[str, tuple[str, str]] = {
    # name -> (with an input, without)
    "alpaca": (ALPACA, ALPACA_NO_INPUT),
    "plain": ("{instruction}\n{input}\n", "{instruction}\n"),
}


def prompt_and_response(record: Mapping[str, Any], template: str = "alpaca") -> tuple[str, str]:
    """The prompt text and the response text of one record.

    `template` is a name in TEMPLATES or a format string with {instruction} and {input};
    a {output} in it marks where the response starts (what follows it is part of the
    response, so it is trained on too)."""
    instruction = str(record.get("instruction", ""))
    given = record.get("input")
    given = "" if given is None else str(given)
    output = str(record.get("output", ""))
    if template in TEMPLATES:
        with_input, without = TEMPLATES[template]
        return (with_input if given else without).format(instruction=instruction, input=given), output
    if "{output}" in template:
        head, _, tail = template.partition("{output}")
        return (head.format(instruction=instruction, input=given),
                output + tail.format(instruction=instruction, input=given))
    return template.format(instruction=instruction, input=given), output


class SFTCollator:
    """Turns (instruction, input, output) records into a padded batch of `input_ids`,
    `labels` (prompt positions -100 with `mask_prompt`) and `attention_mask`."""

    def __init__(self, tokenizer: Any, template: str = "alpaca", mask_prompt: bool = True,
                 max_len: int | None = None, eos: bool = True, eos_id: int | None = None,
                 pad_id: int | None = None):
        self.tokenizer = tokenizer
        self.template = template
        self.mask_prompt = mask_prompt
        self.max_len = max_len
        self.eos_id = eos_id if eos_id is not None else getattr(tokenizer, "eos_token_id", None)
        if eos and self.eos_id is None:
            raise ValueError("the tokenizer has no eos_token_id: pass eos_id=..., or eos=False")
        self.eos = eos
        pad = pad_id if pad_id is not None else getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        self._encode = self._encoder(tokenizer)

    @classmethod
    def from_plan(cls, plan: Any, tokenizer: Any, **overrides) -> "SFTCollator":
        """The collator a finetune plan's `sft(...)` directive describes."""
        d = plan.one("sft") if hasattr(plan, "one") else None
        if d is None:
            raise ValueError(f"plan `{getattr(plan, 'name', plan)}` has no `sft(...)` directive")
        a = d.args
        kw = dict(template=a.template, mask_prompt=a.mask_prompt, max_len=a.max_len, eos=a.eos)
        kw.update(overrides)
        return cls(tokenizer, **kw)

    @staticmethod
    def _encoder(tokenizer) -> Callable[[str], list[int]]:
        fn = getattr(tokenizer, "encode", None)
        if fn is None:
            if not callable(tokenizer):
                raise TypeError("a tokenizer needs `encode(text) -> list[int]` or must be callable")
            return lambda text: list(tokenizer(text))
        try:
            takes_special = "add_special_tokens" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes_special = False
        if takes_special:
            return lambda text: list(fn(text, add_special_tokens=False))
        return lambda text: list(fn(text))

    def encode(self, record: Mapping[str, Any]) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one record, unpadded."""
        prompt, response = prompt_and_response(record, self.template)
        p = self._encode(prompt)
        r = self._encode(response) + ([self.eos_id] if self.eos else [])
        ids = p + r
        labels = ([IGNORE] * len(p) if self.mask_prompt else list(p)) + list(r)
        if self.max_len is not None:
            ids, labels = ids[: self.max_len], labels[: self.max_len]
        return ids, labels

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [self.encode(r) for r in records]
        width = max((len(ids) for ids, _ in pairs), default=0)
        input_ids = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(pairs):
            n = len(ids)
            input_ids[i, :n] = torch.tensor(ids, dtype=torch.long)
            labels[i, :n] = torch.tensor(lab, dtype=torch.long)
            mask[i, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of next-token predictions: logits at t against labels at t + 1,
    positions labelled -100 left out (what transformers' causal LM loss computes)."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             labels[:, 1:].reshape(-1), ignore_index=IGNORE)
