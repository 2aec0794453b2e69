"""Resumable training state: checkpoints of the trainable parameters, AdamW, the scheduler and the RNG, in
safetensors + JSON (no pickle), saved and resumed by `loop.fit`."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import PulseError


def _plan_hash(plan: list) -> str:
    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:16]


class Checkpoints:
    """Resumable training state in `folder`/step-<N>/: `trainable.safetensors` (the trainable parameters by name —
    the LoRA adapter in LoRA mode), `optimizer.safetensors` (AdamW's per-parameter tensors, keys `<index>.<name>`),
    `rng.safetensors` (torch CPU/CUDA generator states) and `state.json` (step, optimizer param groups, scheduler
    state, batch-plan hash, losses so far). Written under a temporary name, renamed, older ones deleted. The batch
    plan is a function of the seed, so the step number is the batch position. `state.json` also holds the caller's
    `extra` dict and whether training stopped there (see `fit`)."""

    def __init__(self, folder, every: int):
        self.folder, self.every = Path(folder), every

    def due(self, step: int, total: int) -> bool:
        return step == total or (self.every > 0 and step % self.every == 0)

    def latest(self) -> Path | None:
        done = sorted(self.folder.glob("step-*[0-9]"), key=lambda p: int(p.name[5:])) if self.folder.is_dir() else []
        return done[-1] if done else None

    def save(self, step, named, opt, sched, plan, losses, extra: dict | None = None, stopped: bool = False) -> None:

        tmp = self.folder / f".step-{step}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({n: p.detach().contiguous().cpu() for n, p in named}, str(tmp / "trainable.safetensors"))
        sd = opt.state_dict()
        tensors, scalars = {}, {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
                else:
                    scalars[f"{idx}.{k}"] = v
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        state = {"step": step, "plan": _plan_hash(plan), "names": [n for n, _ in named],
                 "param_groups": sd["param_groups"], "state_scalars": scalars, "scheduler": sched.state_dict(),
                 "losses": losses, "extra": extra, "stopped": stopped}
        (tmp / "state.json").write_text(json.dumps(state))
        final = self.folder / f"step-{step}"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.folder.glob("step-*[0-9]"):
            if old != final:
                shutil.rmtree(old)

    def resume(self, named, opt, sched, plan, extra: dict | None = None) -> tuple[int, list[dict], bool]:
        """(step, losses so far, stopped) of the newest checkpoint, its state loaded; `extra` updated in place. A
        damaged checkpoint is one line naming it (delete the folder: the training restarts from step 0)."""
        folder = self.latest()
        if folder is None:
            return 0, [], False
        try:
            return self._load(folder, named, opt, sched, plan, extra)
        except PulseError:
            raise
        except Exception as e:  # truncated / garbled JSON or safetensors, missing keys or tensors
            why = " ".join(f"{type(e).__name__}: {e}".split())[:160]
            raise PulseError(f"{folder}: damaged checkpoint ({why}); delete {self.folder} and rerun the same "
                             f"command to restart that training from its beginning") from None

    def _load(self, folder, named, opt, sched, plan, extra) -> tuple[int, list[dict], bool]:

        state = json.loads((folder / "state.json").read_text())
        if state["plan"] != _plan_hash(plan) or state["names"] != [n for n, _ in named]:
            raise PulseError(f"{folder}: checkpoint belongs to another training (different data, recipe or model); "
                             f"delete {self.folder.parent} to start over")
        weights = load_file(str(folder / "trainable.safetensors"))
        with torch.no_grad():
            for n, p in named:
                p.copy_(weights[n])
        tensors = load_file(str(folder / "optimizer.safetensors"))
        per: dict[int, dict] = {}
        for key, v in list(tensors.items()) + list(state["state_scalars"].items()):
            idx, k = key.split(".", 1)
            per.setdefault(int(idx), {})[k] = v
        groups = [{**g, "betas": tuple(g["betas"])} for g in state["param_groups"]]
        opt.load_state_dict({"state": per, "param_groups": groups})
        sched.load_state_dict(state["scheduler"])
        rng = load_file(str(folder / "rng.safetensors"))
        torch.set_rng_state(rng["cpu"])
        cuda = [rng[f"cuda.{i}"] for i in range(len(rng) - 1)]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        if extra is not None and state.get("extra") is not None:
            extra.clear()
            extra.update(state["extra"])
        return state["step"], state["losses"], state.get("stopped", False)


# --- one unlearning request ---------------------------------------------------------------------------------------
