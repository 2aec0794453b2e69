"""Sharded full-parameter unlearning: one `unlearn.mode: full` request under FSDP2, prepared by accelerate.

For models whose full-parameter update does not fit one GPU (LLaVA-1.5-13B: 13.35 B parameters × 16 bytes of fp32
weights, gradients and Adam states ≈ 214 GB; `benchmarks/memory_arithmetic.py`). Run under
`accelerate launch --config_file configs/accelerate/fsdp.yaml` (one process per GPU); the request is the one
`loop.unlearn_request` runs, with the same functions: `prepare` (trainable parameters of the target, fp32 master
layers, gradient checkpointing), `request_plan`, `reference_logps_sum`, `request_loss`, `fit` (AdamW, schedule,
clipping, divergence checks) and `request_info` — only the model is sharded in between, and the updated parameters are
gathered back.

Sharding — `shard`: accelerate's own FSDP2 preparation, `accelerate.utils.fsdp2_prepare_model`: the
FullyShardedDataParallelPlugin's wrap policy (TRANSFORMER_BASED_WRAP: every module of the classes the config names
— LlamaDecoderLayer, CLIPEncoderLayer for LLaVA-1.5 — or, when it names none, of the model's `_no_split_modules`
classes present in it, its own unit), the input embeddings and [final norm, lm_head] as units, then the root, each
through torch's `fully_shard` (parameters become DTensors sharded on dim 0 across the processes).
On GPUs the plugin comes from the accelerate config. On CPU, accelerate 1.15 maps `--cpu` to MULTI_CPU and drops
the plugin (state.py sets DistributedType.FSDP only for GPU-like devices; `Accelerator.prepare` then wraps in DDP),
although torch's FSDP2 itself runs on CPU over gloo — so `make_accelerator` attaches the plugin (FSDP_DEFAULTS) to
the state and `shard` calls `fsdp2_prepare_model` directly: the same wrapping code on CPU and GPU. We do not use
`Accelerator.prepare(model, optimizer)`: `fit` creates AdamW after sharding, over the DTensor parameters (torch's
FSDP2 recipe), so the optimizer, schedule and checks are loop.py's, unchanged.

Batches — every process runs the WHOLE batch (replicated, not split): FSDP shards parameters, gradients and Adam
states (the memory that does not fit), and its gradient reduce-scatter averages N identical gradients, so the update
equals the unsharded one whatever N is. Splitting a batch across processes would change token-mean losses (GA's mean
over the batch's answer tokens is not the mean of per-process means) unless every loss were renormalised by global
token counts. Cost: no data-parallel speed-up inside a step (throughput comes from cells on other GPUs) and each GPU
holds the whole batch's activations. Divergence decisions agree on every process: DTensor norms are all-reduced.

Reference — the model before this request:
- NPO (`needs_ref_forget`): the forget set's reference sequence log-probs are computed
  once per request by the sharded model BEFORE its first update — the same weights, so they are the reference — in
  eval mode and batches of batch_size, exactly as loop.py's full mode does; n floats, reused at every later step
  (indexed by the batch's samples). Exact for all steps; no second copy.
- KL on retain batches (`needs_ref_retain`: ga_klr, npo_klr, kl_min) needs p_ref on every retain batch. At the
  first step the sharded model before its update would be the reference; at step k > 0 its weights have moved, so
  the reference needs either (a) the reference logits of every retain batch of the plan computed before the first
  update (the plan is fixed by the seed up front; masked KL needs only the loss positions: steps × batch × answer
  tokens × vocab floats, e.g. 60 × 4 × 30 × 32,064 × 4 B ≈ 0.9 GB on CPU; kl_min's unmasked KL needs every
  position, ≈ 21 GB) or (b) a frozen second model, itself sharded (2 bytes × P / N per GPU in bf16: 13B over 8 GPUs
  ≈ 3.3 GB). Neither is implemented: these methods are refused with mode full, as in loop.py (`check_method_mode`).

Precision: as loop.py — a bf16 model with `unlearn.master_fp32` holds the target layers in fp32 (hooks), so a
decoder unit mixes fp32 trainable linears and bf16 frozen norms; FSDP2 accepts that (tested on CPU, bit-identical to
the unsharded step). accelerate's `mixed_precision: bf16` (it upcasts every trainable parameter to fp32 and computes
in bf16) is an alternative, not tested. Not supported here (loop.py has them, unsharded): checkpoints / resume inside
a request, `max_steps` / `after_step` in-request evaluations.
"""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import torch

from ..errors import PulseError
from ..fsutil import atomic_write_bytes, atomic_write_text
from ..models.batches import Encoder, Sample
from ..models.load import load_model
from ..schema import from_dict
from .loop import (PARAMS_FILE, REQUEST_FILE, RequestResult, apply_saved, fit, prepare, reference_logps_sum,
                   request_info, request_loss, request_plan)
from .recipe import UnlearnSection

# The plugin used where the accelerate config gives none (CPU): FSDP2, one unit per transformer layer, parameters
# resharded after forward (ZeRO-3-like), full state dict on save, no CPU offload, no accelerate-side checkpointing
# (the recipe's `gradient_checkpointing` uses transformers' own, as loop.py does).
FSDP_DEFAULTS = dict(fsdp_version=2, auto_wrap_policy="TRANSFORMER_BASED_WRAP", reshard_after_forward=True,
                     state_dict_type="FULL_STATE_DICT", cpu_offload=False, cpu_ram_efficient_loading=False,
                     activation_checkpointing=False)
GROUP_TIMEOUT = timedelta(hours=24)


def make_accelerator(cpu: bool | None = None):
    """This process's `accelerate.Accelerator` (initialises the process group from the launcher's environment:
    RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) with an FSDP2 plugin: the accelerate config's, or FSDP_DEFAULTS.
    Collectives time out after GROUP_TIMEOUT: in a `pulse run` group the other processes wait for the next request
    while process 0 evaluates (hours for MMBench on a 13B model; NCCL's default is 10 min)."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.utils import InitProcessGroupKwargs

    acc = Accelerator(cpu=not torch.cuda.is_available() if cpu is None else cpu,
                      kwargs_handlers=[InitProcessGroupKwargs(timeout=GROUP_TIMEOUT)])
    if getattr(acc.state, "fsdp_plugin", None) is None:  # CPU (MULTI_CPU): accelerate drops FSDP there (docstring)
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin(**FSDP_DEFAULTS)
    if acc.state.fsdp_plugin.fsdp_version != 2:
        raise PulseError("configs/accelerate: fsdp_version must be 2 (FSDP2 / fully_shard) for sharded unlearning")
    return acc


def shard(model: torch.nn.Module, accelerator) -> torch.nn.Module:
    """The model sharded in place by accelerate's FSDP2 preparation (see the module docstring); names unchanged."""
    import torch.distributed as dist
    from accelerate.utils import fsdp2_prepare_model

    if not dist.is_initialized():
        raise PulseError("sharded unlearning needs a process group: run it under `accelerate launch --config_file "
                         "configs/accelerate/fsdp.yaml` (or torchrun)")
    plugin = accelerator.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is None:
        # accelerate falls back to `model._no_split_modules`, and fails on a name absent from the model: LLaVA's
        # set also names CLIP's text-tower classes (CLIPTextEmbeddings). Keep the ones the model has.
        present = {type(m).__name__ for m in model.modules()}
        plugin.transformer_cls_names_to_wrap = sorted(set(getattr(model, "_no_split_modules", None) or ()) & present)
    return fsdp2_prepare_model(accelerator, model)


def full_state_dict(model: torch.nn.Module, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU in process 0 — all of it, or the parameters `names` — and {} in the
    others. A collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if names is None else {n: state[n] for n in names if n in state}


def unlearn_request_sharded(model, enc: Encoder, method_name: str, target: str, forget: list[Sample],
                            retain: list[Sample], cfg, seed: int, *, accelerator=None, save_to=None,
                            desc: str = "unlearn") -> tuple[dict[str, torch.Tensor], RequestResult]:
    """`loop.unlearn_request` for `cfg.mode == "full"` with the model sharded: returns (the updated parameters by
    name, full and on CPU, in process 0 — {} in the others; the RequestResult, the same in every process).

    Every process passes the same model (loaded in full: on CPU, or `meta` with accelerate's
    cpu_ram_efficient_loading), the same samples and seed; `enc` makes batches on this process's device. The
    model is consumed (sharded in place). `save_to` (written by process 0) receives `updated_parameters.safetensors`
    and `pulse_request.json` exactly as loop.py writes them, so `loop.apply_saved(model_before, save_to)` rebuilds
    the model after the request in an unsharded process (evaluation)."""
    import torch.distributed as dist

    if cfg.mode != "full":
        raise PulseError(f"sharded unlearning is for unlearn.mode 'full', got {cfg.mode!r} (LoRA fits one GPU)")
    method, forget, steps, plan = request_plan(method_name, forget, retain, cfg, seed)
    model, named, info = prepare(model, target, cfg, "full", seed)
    names = [n for n, _ in named]
    accelerator = accelerator or make_accelerator()
    model = shard(model, accelerator)
    params = dict(model.named_parameters())
    named = [(n, params[n]) for n in names]  # the DTensor parameters, in prepare's order
    ref_forget = reference_logps_sum(model, enc, forget, cfg.batch_size, cfg.mask) if method.needs_ref_forget else None
    loss_fn = request_loss(model, enc, method, forget, retain, cfg, ref_forget)  # retain-KL methods: refused

    losses, status = fit(named, plan, loss_fn, cfg, desc=desc)
    info.update(request_info(method, forget, cfg, steps, losses, status))
    info["sharded"] = {"engine": "fsdp2 (accelerate fsdp2_prepare_model)", "processes": dist.get_world_size(),
                       "batch": "replicated on every process"}
    updated = full_state_dict(model, names)
    if save_to is not None and dist.get_rank() == 0:
        from safetensors.torch import save

        save_to = Path(save_to)
        save_to.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(save_to / PARAMS_FILE, save({n: t.contiguous() for n, t in updated.items()}))
        atomic_write_text(save_to / REQUEST_FILE, json.dumps({"mode": "full", "target": target,
                                                              "master_fp32": cfg.master_fp32}))
    return updated, RequestResult(status, losses, info)


# --- a process group running `pulse run`: process 0 runs the protocol, the others join its sharded requests -----------
#
# `accelerate launch --config_file configs/accelerate/fsdp.yaml -m pulse.cli run CONFIG unlearn.mode=full` (or
# torchrun):
# process 0 is an ordinary serial run (claims, evaluations, probes, files: one process, unsharded, on its GPU);
# whenever it reaches a request it broadcasts what the request needs (`group_request`) and every process runs it
# sharded (`unlearn_request_sharded`); the others wait for the next one (`follow`). The model before the request is
# rebuilt in every process from disk — the phase's checkpoint plus the saved requests before it — and process 0
# applies the request's saved parameters to its own unsharded copy, so evaluation sees exactly what a resume sees.

def _samples_json(samples: list[Sample]) -> list[list]:
    import base64
    return [[s.prompt, s.answer, base64.b64encode(s.image).decode() if s.image is not None else None]
            for s in samples]


def _samples_from(rows: list[list]) -> list[Sample]:
    import base64
    return [Sample(p, a, base64.b64decode(i) if i is not None else None) for p, a, i in rows]


def _broadcast(text: str | None) -> str | None:
    """Process 0's `text` (a JSON document, or None = no more requests) in every process."""
    import torch.distributed as dist
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _model_before(before: dict):
    """The model before a request, unsharded, from disk: the checkpoint, then every saved request in order."""
    lm = load_model(before["checkpoint"], dtype=before["dtype"], device=before["device"],
                    template=before["template"], trust_remote_code=before["trust_remote_code"])
    model = lm.model
    for folder in before["applied"]:
        model = apply_saved(model, folder)
    return lm, model


def group_request(model, before: dict, method_name: str, target: str, forget: list[Sample], retain: list[Sample],
                  cfg, seed: int, *, accelerator, save_to, desc: str = "unlearn"):
    """Process 0: one `mode: full` request run sharded by the whole group; returns (the model after the request —
    `model`, process 0's unsharded model before it, with the saved request applied —, RequestResult). `model`
    waits on the CPU while the group trains.

    `before`: where every process rebuilds `model` from: {checkpoint, dtype, device, template, trust_remote_code,
    eos, applied: [saved request folders]}."""
    import dataclasses

    import torch.distributed as dist

    device = next(model.parameters()).device
    model.to("cpu")
    spec = {"before": before, "method": method_name, "target": target, "forget": _samples_json(forget),
            "retain": _samples_json(retain), "cfg": dataclasses.asdict(cfg), "seed": seed, "desc": desc}
    _broadcast(json.dumps(spec))
    lm, sharded = _model_before(before)
    enc = Encoder(lm.processor, device=lm.device, dtype=next(sharded.parameters()).dtype, eos=before["eos"])
    _, result = unlearn_request_sharded(sharded, enc, method_name, target, forget, retain, cfg, seed,
                                        accelerator=accelerator, save_to=save_to, desc=desc)
    del sharded
    dist.barrier()  # every process is done with its shard
    return apply_saved(model.to(device), save_to), result


def follow(accelerator) -> None:
    """Every process but 0: join process 0's requests (`group_request`) until it says there are no more."""
    import torch.distributed as dist

    while (text := _broadcast(None)) is not None:
        spec = json.loads(text)
        lm, model = _model_before(spec["before"])
        enc = Encoder(lm.processor, device=lm.device, dtype=next(model.parameters()).dtype,
                      eos=spec["before"]["eos"])
        unlearn_request_sharded(model, enc, spec["method"], spec["target"], _samples_from(spec["forget"]),
                                _samples_from(spec["retain"]), from_dict(UnlearnSection, spec["cfg"], "group request"),
                                spec["seed"], accelerator=accelerator, desc=spec["desc"])
        del model
        dist.barrier()


def end_group() -> None:
    """Process 0, after its run: tell the others there are no more requests."""
    _broadcast(None)
