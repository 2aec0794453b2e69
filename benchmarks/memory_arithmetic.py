"""GPU memory of one unlearning step on LLaVA-1.5-7B / 13B, by arithmetic (not measured): which configurations fit
one 80 GB GPU, and what FSDP over 2 / 4 / 8 GPUs (`configs/accelerate/fsdp.yaml`, `pulse.unlearn.sharded`) leaves
per GPU. Prints a markdown table.

    python benchmarks/memory_arithmetic.py [--batch 4] [--seq 700] [--budget-gb 80] [--usable 0.9]

Assumptions (every number below comes from these):
- Parameters (the published totals; `check_counts` re-derives them from the architectures within 1%): LLaVA-1.5-7B
  7.06 B = Vicuna-7B (32 layers, hidden 4096, MLP 11008, vocab 32064) + CLIP ViT-L/14-336 0.30 B + projector 21 M
  (1024→4096→4096); 13B 13.35 B = Vicuna-13B (40 layers, hidden 5120, MLP 13824) + 0.30 B + projector 31 M.
- Update target `proj+llm` (the paper's default): every Llama q/k/v/o/gate/up/down projection + the projector —
  6.50 B (7B) / 12.72 B (13B) parameters. Embeddings, lm_head, norms and CLIP are frozen.
- Weights bf16 (2 B); PULSE's `unlearn.master_fp32` (default) holds the target layers in fp32 (+2 B per target
  parameter). LoRA (r16 on every target linear, adapters fp32): 16 B per LoRA parameter (weight, grad, Adam m and v).
  Full-parameter: 16 B per target parameter (fp32 weight, fp32 grad, Adam m, v), 2 B per frozen parameter.
  "+ reference": a frozen bf16 copy of the whole model (2 B × P), what per-step KL methods would need without
  precomputed reference logits (PULSE refuses those in full mode; NPO needs no copy: cached log-probs).
- Activations, one batch with grad (GA, NPO; methods with a retain term keep a second batch: about 2×), batch × seq
  tokens (default 4 × 700: 576 image tokens + text), all padded to seq; SDPA attention (no seq² scores stored);
  vision tower frozen and run without storing activations. Per token per decoder layer (h hidden, i MLP width):
  2 RMSNorms saving fp32 input and normalised output 16h; each target linear's own fp32 copy of its input (the
  master_fp32 hook) 4(6h + i); q, k, v, attention output in bf16 8h; SwiGLU gate, up, SiLU outputs bf16 6i
  → 48h + 10i bytes. LoRA adds per adapted linear a dropout (0.05) output in fp32 + a 1-byte mask: 5(6h + i).
  Gradient checkpointing (`unlearn.gradient_checkpointing`): each layer keeps its bf16 input (2h) and one layer is
  recomputed at a time. Logits and loss: 14 B × tokens × vocab (bf16 logits, fp32 log-softmax and its gradient).
- FSDP over N GPUs (FSDP2, full sharding, every GPU runs the whole batch — see pulse.unlearn.sharded): weights,
  gradients and Adam states / N, activations unchanged, plus a working set of 3 decoder layers unsharded in fp32
  (the one computing, the one prefetched, the gradient before its reduce-scatter) and the [norm, lm_head] unit
  kept gathered (bf16).
- Fits when the total is at most usable × budget (default 0.9 × 80 GB: CUDA context, NCCL buffers and allocator
  fragmentation take the rest). GB = 1e9 bytes.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Arch:
    name: str
    total: float  # published parameter count
    layers: int
    hidden: int
    mlp: int
    vocab: int = 32064
    clip: float = 0.30e9  # CLIP ViT-L/14-336 (0.303 B)
    vision_hidden: int = 1024

    @property
    def layer_linear(self) -> int:  # q, k, v, o (h×h) + gate, up (h→i) + down (i→h)
        return 4 * self.hidden ** 2 + 3 * self.hidden * self.mlp

    @property
    def projector(self) -> int:  # linear_1 (1024→h) + linear_2 (h→h), with biases
        return self.vision_hidden * self.hidden + self.hidden + self.hidden ** 2 + self.hidden

    @property
    def target(self) -> int:  # proj+llm
        return self.layers * self.layer_linear + self.projector

    @property
    def derived_total(self) -> float:
        llm = self.layers * (self.layer_linear + 2 * self.hidden) + 2 * self.vocab * self.hidden + self.hidden
        return llm + self.clip + self.projector

    @property
    def lora(self) -> int:  # r16 on every target linear: r·(in + out) each
        r, h, i = 16, self.hidden, self.mlp
        return self.layers * (4 * r * 2 * h + 3 * r * (h + i)) + r * (self.vision_hidden + h) + r * 2 * h


ARCHS = (Arch("LLaVA-1.5-7B", 7.06e9, 32, 4096, 11008), Arch("LLaVA-1.5-13B", 13.35e9, 40, 5120, 13824))


def check_counts() -> None:
    for a in ARCHS:
        assert abs(a.derived_total / a.total - 1) < 0.01, (a.name, a.derived_total)


def activations(a: Arch, tokens: int, lora: bool, checkpointing: bool) -> float:
    """Bytes of stored activations + logits/loss for one batch of `tokens` tokens (see the module docstring)."""
    h, i = a.hidden, a.mlp
    per_layer = 48 * h + 10 * i + (5 * (6 * h + i) if lora else 0)
    layers = (a.layers * 2 * h + per_layer) if checkpointing else a.layers * per_layer
    return tokens * (layers + 14 * a.vocab)


def static(a: Arch, mode: str, reference: bool) -> float:
    """Bytes of weights, gradients and optimizer states (sharded by FSDP)."""
    frozen = a.total - a.target
    if mode == "lora":
        return 2 * frozen + 4 * a.target + 16 * a.lora
    return 2 * frozen + 16 * a.target + (2 * a.total if reference else 0)


def working_set(a: Arch, n: int) -> float:
    """FSDP's unsharded working memory per GPU: 3 fp32 decoder layers + the gathered [norm, lm_head] unit."""
    return 0.0 if n == 1 else 3 * 4 * a.layer_linear + 2 * a.vocab * a.hidden


def rows(tokens: int) -> list[tuple[str, str, list[float]]]:
    out = []
    for a in ARCHS:
        for lora, ref in ((True, False), (False, False), (False, True)):
            label = "LoRA r16" if lora else ("full" + (" + reference copy" if ref else ""))
            for ckpt in (False, True):
                act = activations(a, tokens, lora, ckpt)
                gpus = (1,) if lora else (1, 2, 4, 8)
                per = [static(a, "lora" if lora else "full", ref) / n + act + working_set(a, n) for n in gpus]
                out.append((a.name, f"{label}, {'GC' if ckpt else 'no GC'}", per))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=700)
    p.add_argument("--budget-gb", type=float, default=80.0)
    p.add_argument("--usable", type=float, default=0.9)
    args = p.parse_args(argv)
    check_counts()
    tokens, limit = args.batch * args.seq, args.usable * args.budget_gb
    for a in ARCHS:
        print(f"{a.name}: {a.total / 1e9:.2f} B parameters (derived {a.derived_total / 1e9:.2f} B), target proj+llm "
              f"{a.target / 1e9:.2f} B, LoRA r16 {a.lora / 1e6:.1f} M; activations per token "
              f"{activations(a, 1, False, False) / 1e6:.1f} MB full / {activations(a, 1, True, False) / 1e6:.1f} MB "
              f"LoRA (no GC), {activations(a, 1, False, True) / 1e6:.2f} / {activations(a, 1, True, True) / 1e6:.2f}"
              f" MB (GC)")
    print(f"\nGB per GPU, batch {args.batch} × {args.seq} tokens; ✓ = fits {limit:.0f} GB "
          f"({args.usable:.0%} of {args.budget_gb:.0f} GB)\n")
    print("| model | update | 1 GPU | FSDP 2 | FSDP 4 | FSDP 8 |")
    print("|---|---|---|---|---|---|")
    for name, label, per in rows(tokens):
        cells = [f"{v / GB:.1f} {'✓' if v / GB <= limit else '✗'}" for v in per] + ["—"] * (4 - len(per))
        print(f"| {name} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
