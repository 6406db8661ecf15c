"""LoRA adapters to and from PEFT's adapter directories.

A PEFT LoRA adapter is a directory with `adapter_config.json` (rank, alpha, which modules)
and `adapter_model.safetensors` (the adapter's tensors under the transformers model's
module names, `base_model.model.<module>.lora_A.weight`, ...). archc's LoRA layers
(archc.runtime.lora, built from a plan's `lora(...)`) hold the same tensors under the
same names less the `base_model.model.` prefix and with the adapter's name inside
(`h.0.attn.c_attn.lora_A.default.weight`); the spec's module names are transformers'
up to a renaming that archc.interop.hf knows (`family="gpt2"`, `"bert"`, `"llama"`).

    net = prog.build(plan="Lora")                        # finetune Lora for GPT2() { lora(...) }
    load_base(net, hf.gpt2_from_hf(hf_model.state_dict()))
    ... train ...
    export_peft(net, "out/adapter", family="gpt2")       # PeftModel.from_pretrained(hf_model, "out/adapter")

    load_peft(net, "out/adapter", family="gpt2")         # the other way (the layers must have the adapter)
    print(lora_plan("out/adapter", family="gpt2"))       # ... or: the `lora(...)` lines that give them

Ranks come from the tensors' shapes; alphas, dropout, rsLoRA and DoRA from the config
(rank_pattern and alpha_pattern as PEFT reads them).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping

from .hf import MAPS

PREFIX = "base_model.model."
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"

NameMap = Callable[[Mapping[str, object]], dict]


def _maps(family: str | None, to_hf: NameMap | None = None, from_hf: NameMap | None = None):
    if family is not None:
        if family not in MAPS:
            raise ValueError(f"unknown model family {family!r} (known: {', '.join(MAPS)})")
        f, t = MAPS[family]
        from_hf, to_hf = from_hf or f, to_hf or t
    ident = lambda d: dict(d)  # noqa: E731
    return to_hf or ident, from_hf or ident


def _module(mapping: NameMap, path: str) -> str:
    """Map a module path through a state_dict-key map (by probing `path.weight`)."""
    out = list(mapping({f"{path}.weight": None}))
    if len(out) != 1 or not out[0].endswith(".weight"):
        raise ValueError(f"the name map has no name for module `{path}`")
    return out[0][: -len(".weight")]


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _targets(adapted: list[str], everything: list[str]) -> list[str]:
    """PEFT's target_modules: the adapted modules' last names when those pick exactly the
    adapted modules among all of them (PEFT matches a name or a dotted suffix), else their
    full names."""
    leaves = sorted({_leaf(n) for n in adapted})
    picked = {n for n in everything if _leaf(n) in leaves}
    return leaves if picked == set(adapted) else sorted(adapted)


def _pattern(values: dict[str, float], default) -> dict:
    """rank_pattern / alpha_pattern: the layers whose value is not the default, each by the
    shortest dotted suffix of its name that only layers with the same value share."""
    out = {}
    for n, v in values.items():
        if v == default:
            continue
        parts = n.split(".")
        for k in range(1, len(parts) + 1):
            if parts[-k].isdigit():  # never a suffix that starts at a layer number
                continue
            suffix = ".".join(parts[-k:])
            group = [m for m in values if m == suffix or m.endswith("." + suffix)]
            if all(values[m] == v for m in group):
                out[suffix] = v
                break
    return out


def _number(v):
    return int(v) if float(v).is_integer() else v


def export_peft(model, directory, adapter: str = "default", *, family: str | None = None,
                to_hf: NameMap | None = None, base_model_name_or_path: str | None = None,
                task_type: str | None = None) -> Path:
    """Write adapter `adapter` of a built archc model as a PEFT LoRA adapter directory that
    `peft.PeftModel.from_pretrained(<the transformers model>, directory)` loads."""
    from safetensors.torch import save_file

    from ..runtime.lora import LoRAEmbedding, LoRALinear, lora_layers

    to_hf, _ = _maps(family, to_hf=to_hf)
    layers = [(p, m) for p, m in lora_layers(model) if adapter in m.r]
    if not layers:
        have = sorted({a for _, m in lora_layers(model) for a in m.r})
        raise ValueError(f"the model has no adapter named {adapter!r}"
                         + (f" (adapters: {', '.join(have)})" if have else " (build it with a `lora` plan)"))
    tensors, ranks, alphas, settings = {}, {}, {}, set()
    for path, m in layers:
        name = _module(to_hf, path)
        key = PREFIX + name
        if isinstance(m, LoRAEmbedding):
            tensors[key + ".lora_embedding_A"] = m.lora_embedding_A[adapter]
            tensors[key + ".lora_embedding_B"] = m.lora_embedding_B[adapter]
        else:
            tensors[key + ".lora_A.weight"] = m.lora_A[adapter].weight
            tensors[key + ".lora_B.weight"] = m.lora_B[adapter].weight
            if m.use_dora[adapter]:
                tensors[key + ".lora_magnitude_vector"] = m.lora_magnitude_vector[adapter].weight
        ranks[name] = m.r[adapter]
        alphas[name] = m.lora_alpha[adapter]
        init = m.init_lora_weights[adapter]
        settings.add((m.dropout_p[adapter], m.use_rslora[adapter], m.use_dora[adapter],
                      init if isinstance(init, str) else bool(init)))
    if len(settings) > 1:
        raise ValueError("PEFT's config has one dropout, rsLoRA, DoRA and init setting per adapter; this "
                         f"adapter's layers differ: {sorted(settings, key=str)}")
    dropout, rslora, dora, init = settings.pop()
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    every = [_module(to_hf, p) for p, mod in model.named_modules()
             if p and _has_weight(mod) and not _ADAPTER_PARTS.intersection(p.split("."))]
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": _number(alpha),
        "lora_dropout": dropout,
        "target_modules": _targets(sorted(ranks), every),
        "rank_pattern": _pattern(ranks, r),
        "alpha_pattern": {k: _number(v) for k, v in _pattern(alphas, alpha).items()},
        "fan_in_fan_out": any(isinstance(m, LoRALinear) and m.fan_in_fan_out for _, m in layers),
        "bias": "none",
        "use_rslora": rslora,
        "use_dora": dora,
        "init_lora_weights": init,
        "modules_to_save": None,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(out / WEIGHTS),
              metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


_ADAPTER_PARTS = {"lora_A", "lora_B", "lora_magnitude_vector", "lora_dropout"}


def _has_weight(mod) -> bool:
    return "weight" in getattr(mod, "_parameters", {})


def _match(patterns: dict, name: str):
    """PEFT's get_pattern_key: the first pattern that matches the name or a dotted suffix."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return patterns[key]
    return None


def read_peft(directory, *, family: str | None = None, from_hf: NameMap | None = None) -> tuple[dict, dict]:
    """(config, layers): layers maps each archc module path to
    {"r", "alpha", "tensors": {archc suffix without the adapter name: tensor}}."""
    from safetensors.torch import load_file

    _, from_hf = _maps(family, from_hf=from_hf)
    d = Path(directory)
    config = json.loads((d / CONFIG).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{d} holds a {config.get('peft_type')} adapter, not LoRA")
    weights = d / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing (adapter_model.bin is not read: convert it to safetensors)")
    layers: dict[str, dict] = {}
    for key, t in load_file(str(weights)).items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        m = re.match(r"(.+?)\.(lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B|"
                     r"lora_magnitude_vector)$", name)
        if m is None:
            raise ValueError(f"{key}: not a LoRA tensor (archc reads LoRA adapters without modules_to_save)")
        hf_name, part = m.groups()
        path = _module(from_hf, hf_name)
        entry = layers.setdefault(path, {"hf": hf_name, "tensors": {}})
        entry["tensors"][part] = t
    for path, entry in layers.items():
        ts = entry["tensors"]
        a = ts.get("lora_A.weight", ts.get("lora_embedding_A"))
        entry["r"] = int(a.shape[0])
        alpha = _match(config.get("alpha_pattern") or {}, entry["hf"])
        entry["alpha"] = alpha if alpha is not None else config.get("lora_alpha", 8)
    return config, layers


def load_peft(model, directory, adapter: str = "default", *, family: str | None = None,
              from_hf: NameMap | None = None) -> list[str]:
    """Copy a PEFT LoRA adapter's tensors into a built archc model's adapter `adapter`; the
    model must have it on the same layers with the same ranks (build it with the plan
    `lora_plan(directory)` writes). Alphas and rsLoRA follow the file. Returns the paths."""
    import torch

    from ..runtime.lora import LoRALayer

    config, layers = read_peft(directory, family=family, from_hf=from_hf)
    rslora = bool(config.get("use_rslora"))
    modules = {}
    for path in layers:
        try:
            m = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"the adapter has a layer `{path}` that the model lacks") from None
        if not isinstance(m, LoRALayer) or adapter not in m.r:
            raise ValueError(f"`{path}` has no adapter {adapter!r}: build the model with\n"
                             + lora_plan(directory, family=family, from_hf=from_hf, name=adapter))
        modules[path] = m
    for path, entry in layers.items():
        m = modules[path]
        with torch.no_grad():
            for part, t in entry["tensors"].items():
                if part.endswith(".weight"):
                    dest = getattr(m, part.split(".")[0])[adapter].weight
                elif part == "lora_magnitude_vector":
                    dest = m.lora_magnitude_vector[adapter].weight
                else:
                    dest = getattr(m, part)[adapter]
                if tuple(dest.shape) != tuple(t.shape):
                    raise ValueError(f"`{path}`: {part} is {list(t.shape)} in the adapter but "
                                     f"{list(dest.shape)} in the model (rank {m.r[adapter]})")
                dest.copy_(t)
        m.lora_alpha[adapter] = entry["alpha"]
        m.use_rslora[adapter] = rslora
        m.scaling[adapter] = entry["alpha"] / (m.r[adapter] ** 0.5 if rslora else m.r[adapter])
    return list(layers)


def lora_plan(directory, *, family: str | None = None, from_hf: NameMap | None = None,
              name: str = "default") -> str:
    """The `lora(...)` directives (one per rank and alpha) that give a model the layers of a
    PEFT adapter, for a finetune plan."""
    config, layers = read_peft(directory, family=family, from_hf=from_hf)
    groups: dict[tuple, list[str]] = {}
    for path, entry in layers.items():
        groups.setdefault((entry["r"], entry["alpha"]), []).append(path)
    lines = []
    for (r, alpha), paths in groups.items():
        extra = ""
        if config.get("lora_dropout"):
            extra += f", dropout={config['lora_dropout']}"
        if config.get("use_rslora"):
            extra += ", rslora=true"
        if config.get("use_dora"):
            extra += ", dora=true"
        if name != "default":
            extra += f', name="{name}"'
        lines.append(f'lora(on="{", ".join(paths)}", r={r}, alpha={_number(alpha)}{extra})')
    return "\n".join(lines)
