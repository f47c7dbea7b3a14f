"""What the language tasks need to know about a Hugging Face causal LM's architecture, found by
looking at the loaded model rather than by its name: the list of transformer blocks (EK-FAC on the
CPU tracks only these), the attention projections inside a block (BIF samples only these, 001 B.1),
and GPT-2-style ``Conv1D`` layers, which become the equivalent ``nn.Linear`` so that per-layer
methods (kronfluence tracks exact ``nn.Linear``/``nn.Conv2d`` types) see every projection."""
from __future__ import annotations

import re
from typing import Any, Optional

import torch
from torch import nn


def block_list(model: nn.Module) -> Optional[str]:
    """Qualified name of the ``nn.ModuleList`` holding the model's ``num_hidden_layers`` blocks
    (``gpt_neox.layers``, ``transformer.h``, ``model.layers``, ...); None when there is none."""
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if name and isinstance(module, nn.ModuleList) and len(module) == depth:
            return name
    return None


def block_pattern(model: nn.Module) -> Optional[str]:
    """Regex of every parameter inside the transformer blocks (not embeddings, final norm, head)."""
    blocks = block_list(model)
    return None if blocks is None else f"^{re.escape(blocks)}\\."


def attention_pattern(model: nn.Module) -> Optional[str]:
    """Regex of the weights of a block's attention projections, e.g. ``attention\\.(query_key_value|dense)
    \\.weight`` (GPT-NeoX), ``attn\\.(c_attn|c_proj)\\.weight`` (GPT-2, once linearised) or
    ``self_attn\\.(q_proj|k_proj|v_proj|o_proj)\\.weight`` (Llama); None when a block has no attention
    sub-module with Linear children (e.g. a state-space model)."""
    blocks = block_list(model)
    if blocks is None:
        return None
    first = model.get_submodule(blocks)[0]
    for name, module in first.named_modules():
        leaf = name.rsplit(".", 1)[-1].lower()
        linears = [child for child, m in module.named_children() if isinstance(m, nn.Linear)]
        if name and ("attn" in leaf or "attention" in leaf) and linears:
            return f"{re.escape(name)}\\.({'|'.join(map(re.escape, linears))})\\.weight"
    return None


def linearize(model: nn.Module) -> int:
    """Replace every transformers ``Conv1D`` (``y = x W + b`` with ``W: [in, out]``) by the same map as
    an ``nn.Linear`` (weight ``Wᵀ``), in place; returns how many were replaced.  Outputs are unchanged
    up to float rounding order."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return 0
    swaps: list[tuple[nn.Module, str, Any]] = [(parent, child, m) for parent in model.modules()
                                               for child, m in parent.named_children() if isinstance(m, Conv1D)]
    for parent, child, conv in swaps:
        n_in, n_out = conv.weight.shape
        linear = nn.Linear(n_in, n_out, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        setattr(parent, child, linear)
    return len(swaps)
