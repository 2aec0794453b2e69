"""Simulated weight quantization (round-to-nearest, symmetric, per output channel) for the quantization probe.

Why: 4-bit quantization of an unlearned model can bring "forgotten" knowledge back (Zhang et al., "Does your LLM
truly unlearn? An embarrassingly simple approach to recover unlearned knowledge", arXiv 2410.16454): unlearning
moves weights by less than a quantization step, and rounding snaps them back towards the model before unlearning.

Scheme (simulated in floating point, any device): for each weight matrix W (out × in) of a quantized Linear layer
and each output channel (row) c,

    qmax  = 2^(bits−1) − 1                         (8 bits: 127, 4 bits: 7; restricted symmetric range)
    s_c   = max_j |W_cj| / qmax                    (absmax scale; an all-zero row keeps s_c = 1, stays zero)
    Q_cj  = clamp(round(W_cj / s_c), −qmax, qmax)  (torch.round: halves to even)
    Ŵ_cj  = Q_cj · s_c                             (computed in fp32, stored back in the weight's dtype)

Biases are not quantized. Which layers: every `torch.nn.Linear` except the output embedding (`lm_head`), as
bitsandbytes' default (transformers keeps the output embedding unquantized); vision tower and projector Linears
included. This is weight-only RTN; bitsandbytes' LLM.int8 (vector-wise absmax with fp16 outlier columns) and NF4
(block-wise, 64 weights per block, normal-float code book) differ in detail — the option names say which ran.

`quantized(model, bits)` quantizes in place and restores the exact original weights (bitwise) on exit; the
originals are kept on the CPU (one copy of the quantized layers' weights) while the block runs.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import PulseError

SCHEME = "rtn-symmetric-per-channel (simulated)"


def qmax(bits: int) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise PulseError(f"quantization bits must be an integer in [2, 16], got {bits!r}")
    return 2 ** (bits - 1) - 1


def rtn(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Ŵ of the module docstring for a 2-D weight (rows = output channels), in fp32."""
    if weight.dim() != 2:
        raise PulseError(f"rtn expects a 2-D weight (out × in), got shape {tuple(weight.shape)}")
    q = qmax(bits)
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / q, torch.ones_like(absmax))
    return torch.clamp(torch.round(w / scale), -q, q) * scale


def quantized_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    """(name, module) of every Linear that is quantized: all but the output embedding."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not out_emb]


@contextlib.contextmanager
def quantized(model, bits: int):
    """Within the block, every quantized Linear's weight is replaced by its RTN value; on exit (also on error) the
    original tensors' values are copied back bit for bit. Yields the number of quantized layers."""
    qmax(bits)
    layers = quantized_linears(model)
    originals = []
    try:
        with torch.no_grad():
            for _, m in layers:
                originals.append((m, m.weight.detach().to("cpu", copy=True)))
                m.weight.copy_(rtn(m.weight, bits).to(m.weight.dtype))
        yield len(layers)
    finally:
        with torch.no_grad():
            for m, w in originals:
                m.weight.copy_(w.to(m.weight.device))
