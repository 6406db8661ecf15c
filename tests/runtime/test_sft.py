"""archc.runtime.sft: instruction-tuning records -> token ids, labels and masks."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import archc
from archc.runtime.sft import IGNORE, SFTCollator, causal_lm_loss, prompt_and_response

DOC = Path(__file__).resolve().parents[2] / "docs" / "finetuning.md"


class Chars:
    """A character-level tokenizer: 'a' -> 10, 'b' -> 11, ...; 1 ends a sequence, 0 pads."""

    eos_token_id, pad_token_id = 1, 0

    def encode(self, text):
        return [ord(c) - ord("a") + 10 if c.isalpha() else {" ": 2, ":": 3, "\n": 4}[c] for c in text]


def test_masks_match_a_hand_computed_example():
    collate = SFTCollator(Chars(), template="q: {instruction}{input}\na: ", mask_prompt=True)
    batch = collate([{"instruction": "ab", "input": "", "output": "ba"},
                     {"instruction": "a", "output": "c"}])
    # prompt 1: "q: ab\na: " = q : _ a b \n a : _  -> 26 3 2 10 11 4 10 3 2 (9 tokens)
    # response 1: "ba" + eos -> 11 10 1
    # prompt 2: "q: a\na: " -> 26 3 2 10 4 10 3 2 (8 tokens); response 2: "c" + eos -> 12 1; 2 pads
    assert batch["input_ids"].tolist() == [
        [26, 3, 2, 10, 11, 4, 10, 3, 2, 11, 10, 1],
        [26, 3, 2, 10, 4, 10, 3, 2, 12, 1, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE] * 9 + [11, 10, 1],
        [IGNORE] * 8 + [12, 1, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1] * 12, [1] * 10 + [0] * 2]


def test_unmasked_prompt_truncation_and_templates():
    collate = SFTCollator(Chars(), template="plain", mask_prompt=False, max_len=5)
    ids, labels = collate.encode({"instruction": "ab", "input": "c", "output": "d"})
    assert ids == [10, 11, 4, 12, 4] and labels == ids  # "ab\nc\n" then "d", eos: cut at 5
    prompt, response = prompt_and_response({"instruction": "Sum.", "input": "1 2", "output": "3"})
    assert prompt.endswith("### Input:\n1 2\n\n### Response:\n") and response == "3"
    prompt, _ = prompt_and_response({"instruction": "Hi."})
    assert "### Input" not in prompt
    prompt, response = prompt_and_response({"instruction": "x", "output": "y"}, "<s>{instruction}</s>{output}</e>")
    assert (prompt, response) == ("<s>x</s>", "y</e>")


def test_a_plan_configures_the_collator():
    prog = archc.parse('model M() {\n input x: float32[B, 4]\n output y = x -> fc: linear(2)\n}\n'
                       'finetune S for M() {\n  sft(template="plain", mask_prompt=false, max_len=7)\n}\n', "s.arch")
    collate = SFTCollator.from_plan(prog.plan("S"), Chars())
    assert (collate.template, collate.mask_prompt, collate.max_len) == ("plain", False, 7)
    with pytest.raises(archc.CompileError) as e:
        archc.parse('model M() {\n input x: float32[B, 4]\n output y = x -> fc: linear(2)\n}\n'
                    'finetune S for M() {\n  sft(template="chat")\n}\n', "s.arch").plan("S")
    assert e.value.diagnostics[0].code == "E0502"


def test_loss_counts_only_response_positions():
    logits = torch.randn(1, 4, 6)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 5]])
    want = torch.nn.functional.cross_entropy(logits[0, 1:3], torch.tensor([3, 5]))
    torch.testing.assert_close(causal_lm_loss(logits, labels), want)


def test_the_documented_example_runs():
    """docs/finetuning.md's ```python blocks run, in order, in one namespace."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)
    assert blocks, "docs/finetuning.md has no runnable example"
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)
    assert namespace["loss_after"] < namespace["loss_before"]
