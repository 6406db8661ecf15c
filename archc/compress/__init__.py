"""Compression plans: structured and unstructured pruning, quantization, distillation.

`archc compress SPEC --plan NAME` runs a `compress` plan (archc.compress.driver) and
prints a before/after table. The pieces:

- `archc.compress.check`: the plan's diagnostics (E08xx); no torch, `archc check` runs it;
- `archc.compress.spec`: a (pruned) graph written back as a plain `.arch` spec; no torch;
- `archc.compress.prune`: importance, channel removal and weight slicing over the graph
  analysis of archc.compiler.passes.prune_groups; unstructured masks;
- `archc.compress.quantize`: dynamic int8 (torchao `quantize_`), static and QAT (PT2E);
- `archc.compress.size`: honest sizes (live tensors only) and safetensors files;
- `archc.runtime.train.distill`: the distillation loss on the one training loop.

Importing this package does not import torch.
"""
