"""The run from its config alone, no I/O: the cells in the plan's order, the sweep's variants, each cell's recipe,
which checkpoint each scenario starts from, and the stable seeds of its requests."""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, replace

from ..config import RunConfig, method_references
from ..unlearn.recipe import UnlearnSection

# the checkpoint each scenario starts from
PHASE = {"finetuned": "finetuned", "sustainability": "finetuned", "pretrained": "pretrained"}
MATCHED_SCENARIOS = ("finetuned", "pretrained")  # single-request scenarios; sustainability stays fixed-budget


@dataclass(frozen=True)
class Cell:
    """The unit of work: one scenario × method × target × seed, with all its requests and probes. `run_cell` runs
    it into the run directory; launchers only decide where that happens."""
    scenario: str
    method: str
    target: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.scenario}/{self.method}__{self.target}__seed{self.seed}"


def cells(cfg: RunConfig) -> list[Cell]:
    """Every cell of the run, in the plan's order (seed, scenario, then method × target as `plan`)."""
    pairs = plan(cfg)
    return [Cell(s, m, t, seed) for seed in cfg.seeds for s in cfg.scenarios for m, t in pairs[s]]


def method_names(cfg: RunConfig) -> dict[str, str]:
    """{method as written in the config: the name it goes by in cell folders, results and reports}: its
    `Method.name` (a reference such as `examples.my_method:MY_METHOD` is shown as the name it defines)."""
    written = cfg.methods + cfg.table3_methods
    by_reference = {ref: name for name, ref in method_references(written).items()}
    return {m: by_reference.get(m, m) for m in written}


def plan(cfg: RunConfig) -> dict[str, list[tuple[str, str]]]:
    """(method, target) pairs per scenario; the fine-tuned scenario also holds Table 3's extra targets; sweep
    variants (method `<method>@<config>`) follow in the single-request scenarios, for the run's targets."""
    names = method_names(cfg)
    base = [(names[m], t) for t in cfg.targets for m in cfg.methods]
    extra = [(names[m], t) for t in cfg.table3_targets for m in cfg.table3_methods if (names[m], t) not in base]
    swept = [(v, t) for t in cfg.targets for v in variants(cfg)]
    return {s: base + (extra if s == "finetuned" else []) + (swept if s in MATCHED_SCENARIOS else [])
            for s in cfg.scenarios}


def variants(cfg: RunConfig) -> dict[str, dict]:
    """The sweep's cells: `<method>@<k>=<v>+<k>=<v>` (grid keys in their declared order, values with %g) ->
    {"method": as written in `methods`, "lr", "params": the method's own overrides}; grids as the product of the
    declared lists."""
    out, names = {}, method_names(cfg)
    for method, grid in cfg.sweep.items():
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            chosen = dict(zip(keys, values))
            label = "+".join(f"{k}={format(v, 'g') if isinstance(v, float) else v}" for k, v in chosen.items())
            out[f"{names[method]}@{label}"] = {"method": method, "lr": chosen.pop("lr", cfg.unlearn.lr),
                                                          "params": chosen}
    return out


def cell_recipe(cfg: RunConfig, scenario: str, method: str) -> tuple[str, UnlearnSection]:
    """(the method as the registry resolves it, the recipe of this cell): the run's recipe, the pre-trained
    scenario's own mode, and a sweep variant's lr and method parameters."""
    recipe = cfg.unlearn
    if scenario == "pretrained" and cfg.scenario.pretrained.mode:
        recipe = replace(recipe, mode=cfg.scenario.pretrained.mode)
    if "@" not in method:
        return method_references(cfg.methods + cfg.table3_methods).get(method, method), recipe
    v = variants(cfg)[method]
    name = method.split("@")[0]
    own = {**(recipe.params.get(name) or {}), **v["params"]}
    return v["method"], replace(recipe, lr=v["lr"], params={**recipe.params, name: own})


def stable_seed(*parts) -> int:
    """A stable 31-bit seed from the parts (Python's hash() is salted per process)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) % 2**31


def request_seed(cell: Cell, request: int) -> int:
    """The seed of one request of a cell: a sweep's variants share their method's."""
    return stable_seed(cell.seed, cell.scenario, cell.method.split("@")[0], cell.target, request)
