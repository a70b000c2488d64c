"""Function-preserving retrofits: how close does each init + recovery recipe bring a KAN retrofit to the original?

    .venv/bin/python benchmarks/recovery_study.py [--recipes a,b] [--seeds 0 1] [--out runs/recovery-study]

The demo's setting on the embedded SmolLM2-135M-Instruct: `last:5`, 1,200 conversations of
../shared/data/chat, 128 of them carved out as the held-out set exactly as the demo carves it
(`kallm.evaluation.heldout.scoring.carve_heldout`, the grid's seed), conversations of at most 192 tokens, batches of 4. Each
recipe × seed: load, retrofit, init (random, layerwise or sequential distillation), score the held-out set,
recover (train.loss, lr, steps, freeze), score again. Reported per recipe: held-out NLL per assistant token
right after the init and after the recovery, its difference from the original with the 95% interval of
`kallm.report.stats.nll_difference_ci` (seeds and conversations, paired), the quality retained
(original NLL / variant NLL), tokens trained on and the wall time of init and recovery.

Runs are recorded in OUT/results.jsonl (a finished recipe × seed is not run again) with their per-conversation
NLL sums; prefix states (layers 0-24) of the training and held-out conversations are cached in OUT/cache and
shared by every run. The table goes to OUT/recovery_study.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KALLM_SHARED_DATA", REPO.parent / "shared" / "data"))
KAN = "kan:chebyshev2:2"
CHEB6 = "kan:chebyshev2:6"  # one KAN layer at exactly the original FFN's parameter count (2,654,208 per layer)
MATCHED_LINEAR = "linear@budget=1327104"  # a fresh SwiGLU of the model's MLP class, narrowed to the KAN's 1,327,104 parameters
# The demo's training settings (configs/demo.yaml); a recipe overrides some of them.
DEMO_TRAIN = dict(steps=40, batch_size=4, max_length=192, lr=2e-3, warmup_steps=4, eval_every=0, val_size=16,
                  eval_batches=1, save_every=0, prefix_cache=True, max_conversations=1200)

log = logging.getLogger("recovery_study")


@dataclass(frozen=True)
class Recipe:
    """An init and a recovery: what a variant of the demo would set."""

    variant: str = KAN
    init: str = "sequential"  # random | layerwise | sequential | original (the original FFNs, to train further)
    target: str = "block"  # sequential distillation's target
    freeze: str = "ffn"
    fit_tokens: int = 8192  # distill.tokens (the demo's)
    train: dict = field(default_factory=dict)  # TrainConfig overrides of DEMO_TRAIN; steps 0: init only
    distill: dict = field(default_factory=dict)  # DistillConfig overrides (AdamW steps and lr of a stack's fit)


def _kd(lr: float, steps: int, loss: str = "kd", warmup: int | None = None) -> dict:
    """TrainConfig overrides of a recovery: `loss` for `steps` steps at `lr` (warm-up DEMO_TRAIN's unless given)."""
    return {"loss": loss, "lr": lr, "steps": steps, **({} if warmup is None else {"warmup_steps": warmup})}


RECIPES: dict[str, Recipe] = {
    "random+ce": Recipe(init="random", train={"loss": "ce"}),
    "layerwise+ce": Recipe(init="layerwise", train={"loss": "ce"}),  # the demo's kan-cheb2-distill before #12
    "seq-ffn+ce": Recipe(target="ffn", train={"loss": "ce"}),
    "seq-block+ce": Recipe(train={"loss": "ce"}),
    "seq-block+kd": Recipe(train={"loss": "kd"}),
    "seq-block+ce+kd": Recipe(train={"loss": "ce+kd"}),
    "seq-block+kd-all": Recipe(train={"loss": "kd", "kd_positions": "all"}),
    "seq-block+kd+hidden": Recipe(train={"loss": "kd+hidden"}),
    "seq-block+kd-T2": Recipe(train={"loss": "kd", "kd_temperature": 2.0}),
    "seq-block+kd-lr1e-3": Recipe(train={"loss": "kd", "lr": 1e-3}),
    "seq-block+kd-lr4e-3": Recipe(train={"loss": "kd", "lr": 4e-3}),
    "seq-block+kd-blocks": Recipe(freeze="blocks", train={"loss": "kd"}),
    "linear-matched:seq-block+kd": Recipe(variant=MATCHED_LINEAR, train={"loss": "kd"}),
    "linear-matched:seq-block-32k+kd-lr1e-3": Recipe(variant=MATCHED_LINEAR, fit_tokens=32768,
                                                     train={"loss": "kd", "lr": 1e-3}),
    "linear-matched:seq-block+kd-blocks": Recipe(variant=MATCHED_LINEAR, freeze="blocks", train={"loss": "kd"}),
    "seq-block-32k+kd": Recipe(fit_tokens=32768, train={"loss": "kd"}),
    "seq-block-32k+kd-lr1e-3": Recipe(fit_tokens=32768, train={"loss": "kd", "lr": 1e-3}),
    "seq-block-32k+kd-lr5e-4": Recipe(fit_tokens=32768, train={"loss": "kd", "lr": 5e-4}),
    "seq-block-32k+kd-lr1e-3-80": Recipe(fit_tokens=32768, train={"loss": "kd", "lr": 1e-3, "steps": 80}),
    "seq-block-32k+kd-all-lr1e-3": Recipe(fit_tokens=32768, train={"loss": "kd", "kd_positions": "all", "lr": 1e-3}),
    "seq-block-64k+kd-lr1e-3": Recipe(fit_tokens=65536, train={"loss": "kd", "lr": 1e-3}),
    "seq-block-32k+kd-blocks": Recipe(fit_tokens=32768, freeze="blocks", train={"loss": "kd"}),
    # at most the original FFN's parameter count (2,654,208 per layer): degree 6, one layer, still linear in weights
    "cheb2:6 seq-block-32k+kd": Recipe(variant="kan:chebyshev2:6", fit_tokens=32768, train={"loss": "kd"}),
    "cheb2:6 seq-block-32k+kd-lr5e-4": Recipe(variant="kan:chebyshev2:6", fit_tokens=32768,
                                              train={"loss": "kd", "lr": 5e-4}),
    "cheb2:6 seq-block-32k+kd-lr1e-3": Recipe(variant="kan:chebyshev2:6", fit_tokens=32768,
                                              train={"loss": "kd", "lr": 1e-3}),
    "cheb2:6 seq-block-32k+kd-lr5e-4-80": Recipe(variant=CHEB6, fit_tokens=32768, train=_kd(5e-4, 80)),
    "cheb2:6 seq-block-32k+kd-lr7e-4-80": Recipe(variant=CHEB6, fit_tokens=32768, train=_kd(7e-4, 80)),
    "cheb2:6 seq-block-32k+kd-lr5e-4-160": Recipe(variant=CHEB6, fit_tokens=32768, train=_kd(5e-4, 160)),
    # its parameter-matched control: a fresh SwiGLU of the original's size (the linear restart), same recipe
    "linear:seq-block-32k+kd-lr5e-4-160": Recipe(variant="linear", fit_tokens=32768, train=_kd(5e-4, 160)),
    "cheb2:6 seq-block-32k+ce+kd-lr5e-4-80": Recipe(variant=CHEB6, fit_tokens=32768, train=_kd(5e-4, 80, "ce+kd")),
    "linear:seq-block-32k+ce+kd-lr5e-4-80": Recipe(variant="linear", fit_tokens=32768,
                                                   train=_kd(5e-4, 80, "ce+kd")),
    # what the same training does to the original model itself (its last 5 FFNs trained): how much of a
    # ce recipe's gain is adaptation to the chat data rather than recovery of the original
    "original-ffn:ce+kd-lr5e-4-80": Recipe(variant="linear", init="original", train=_kd(5e-4, 80, "ce+kd")),
    "original-ffn:ce+kd-lr5e-4-30": Recipe(variant="linear", init="original", train=_kd(5e-4, 30, "ce+kd", warmup=3)),
    # the demo's pair (16k-token fit, 30 steps, 100 AdamW steps for the SwiGLU's fit) with ce+kd, and with kd
    "seq-block-16k+ce+kd-lr5e-4-30": Recipe(fit_tokens=16384, train=_kd(5e-4, 30, "ce+kd", warmup=3)),
    "linear-matched:seq-block-16k+ce+kd-lr5e-4-30": Recipe(variant=MATCHED_LINEAR, fit_tokens=16384,
                                                           distill={"steps": 100}, train=_kd(5e-4, 30, "ce+kd", warmup=3)),
    "seq-block-16k+kd-lr5e-4-30": Recipe(fit_tokens=16384, train=_kd(5e-4, 30, warmup=3)),
    "cheb2:6 seq-block-16k+kd-lr5e-4-80": Recipe(variant=CHEB6, fit_tokens=16384, train=_kd(5e-4, 80)),
    # two KAN layers (576 -> 576 -> 576) at the original FFN's count: products of inputs become possible
    "2-layer@match seq-block+kd": Recipe(variant=f"kan:sequential({KAN[4:]},{KAN[4:]})@budget=match",
                                         train={"loss": "kd"}),
    # the same stack, started as a one-layer fit (first layer fitted to pass its input on, the last solved),
    # then fitted by AdamW on the block targets, then KD
    "2-layer@match seq-block-32k+kd-lr1e-3": Recipe(variant=f"kan:sequential({KAN[4:]},{KAN[4:]})@budget=match",
                                                    fit_tokens=32768, train={"loss": "kd", "lr": 1e-3}),
    "2-layer@match seq-block-32k-adamw3e-4+kd-lr1e-3": Recipe(
        variant=f"kan:sequential({KAN[4:]},{KAN[4:]})@budget=match", fit_tokens=32768,
        distill={"lr": 3e-4}, train={"loss": "kd", "lr": 1e-3}),
    "2-layer@match seq-block-32k": Recipe(variant=f"kan:sequential({KAN[4:]},{KAN[4:]})@budget=match",
                                          fit_tokens=32768, train={"steps": 0}),
    # init only (no recovery): what the fit alone buys
    "seq-block-16k": Recipe(fit_tokens=16384, train={"steps": 0}),
    "seq-block-32k": Recipe(fit_tokens=32768, train={"steps": 0}),
    "cheb2:4 seq-block-32k": Recipe(variant="kan:chebyshev2:4", fit_tokens=32768, train={"steps": 0}),
    "linear-matched:random+ce": Recipe(variant=MATCHED_LINEAR, init="random", train={"loss": "ce"}),
}


class Study:
    """The shared inputs of every run: data, held-out set, prefix caches, the original's scores."""

    def __init__(self, out: Path) -> None:
        from kallm.data import load_conversations
        from kallm.evaluation.heldout.scoring import carve_heldout
        from kallm.experiment.heldout_sets import HELDOUT_SEED
        from kallm.models.loading import load_model
        from kallm.runtime.precision import resolve_precision

        self.out = out
        (out / "cache").mkdir(parents=True, exist_ok=True)
        _, self.tokenizer = load_model("smollm2-135m-instruct")
        self.pad = self.tokenizer.pad_token_id
        data = load_conversations(SHARED / "chat", max_conversations=DEMO_TRAIN["max_conversations"])
        self.heldout, self.train_data = carve_heldout(data, 128, self.tokenizer, DEMO_TRAIN["max_length"],
                                                      HELDOUT_SEED)
        self.caches: dict[str, object] = {}
        self.precision = resolve_precision("auto", torch.device("cpu"))  # the demo's train and eval precision

    def cache(self, model, name: str, layer: int):
        """One prefix cache per data set, in the precision the runs compute in (as a grid keeps them)."""
        from kallm.models.prefix import PrefixCache

        if name not in self.caches:
            path = self.out / "cache" / f"prefix-{name}-layer{layer}-{self.precision.name}.safetensors"
            self.caches[name] = PrefixCache.for_model(path, model, layer, self.precision.storage_dtype,
                                                      self.precision.name)
        return self.caches[name]

    def save_caches(self) -> None:
        for cache in self.caches.values():
            if cache.dirty:
                cache.save(cache.path)

    def score(self, model, layer: int):
        """Held-out NLL in the demo's evaluation precision (`auto`), the shared layers from the cache."""
        from kallm.evaluation.heldout.scoring import score_heldout

        with self.precision.autocast("cpu"):
            return score_heldout(model, self.heldout, name="heldout", pad_id=self.pad, layer_index=layer,
                                 cache=self.cache(model, "heldout", layer), batch_size=16)


def _init(study: Study, model, recipe: Recipe, seed: int, layer: int) -> dict:
    """Fit the new FFNs as the recipe says; returns the fit's record (FVU per layer, wall time)."""
    from kallm.data import token_batches
    from kallm.distill.layerwise import DistillConfig, collect_ffn_io, distill_retrofit
    from kallm.distill.sequential import sequential_distill
    from kallm.distill.teacher import build_teacher
    from kallm.training.config import TrainConfig
    from kallm.training.examples import prepare_data

    if recipe.init == "random":
        return {"wall_s": 0.0}
    if recipe.init == "original":  # the reference: the untouched model's own FFNs, trained by the same recipe
        from kallm.retrofitting.displaced import restore_original_weights

        restore_original_weights(model)
        return {"wall_s": 0.0}
    cfg = DistillConfig(tokens=recipe.fit_tokens, mode="sequential" if recipe.init == "sequential" else "layerwise",
                        target=recipe.target if recipe.init == "sequential" else "ffn", **recipe.distill)
    examples, _ = prepare_data(study.tokenizer, study.train_data, TrainConfig(**_train_settings(recipe, seed)))
    batches = token_batches(examples, study.pad, cfg.tokens)
    start = time.perf_counter()
    if recipe.init == "sequential":
        fits = sequential_distill(model, build_teacher(model), batches, cfg, target=cfg.target, seed=seed,
                                  cache=study.cache(model, "train", layer))
    else:  # the original model's FFN pairs: collected on the teacher (the untouched model) here
        teacher = build_teacher(model)
        io = collect_ffn_io(teacher, batches, range(layer, layer + 5), cfg.tokens)
        fits = distill_retrofit(model, io, cfg, seed=seed)
    return {"wall_s": time.perf_counter() - start, "fvu": [round(f.fvu, 4) for f in fits]}


def _train_settings(recipe: Recipe, seed: int) -> dict:
    return {**DEMO_TRAIN, **recipe.train, "seed": seed}


def run_one(study: Study, name: str, recipe: Recipe, seed: int) -> dict:
    from kallm.models.loading import load_model
    from kallm.retrofitting import retrofit
    from kallm.training import train_model
    from kallm.training.config import TrainConfig

    model, _ = load_model("smollm2-135m-instruct")
    report = retrofit(model, layers="last:5", variant=recipe.variant, freeze=recipe.freeze, seed=seed)
    layer = min(report.layer_indices)
    init = _init(study, model, recipe, seed, layer)
    at_init = study.score(model, layer)
    settings = _train_settings(recipe, seed)
    trained = {"train_s": 0.0, "tokens": 0, "tokens_per_s": 0.0}
    if settings["steps"]:
        k = report.first_trainable_layer
        result = train_model(model, study.tokenizer, study.train_data, TrainConfig(**settings),
                             study.out / "runs" / f"{name}.{seed}", progress=False,
                             prefix_cache=study.cache(model, "train", k))
        trained = {"train_s": result.wall_s, "tokens": result.tokens, "tokens_per_s": result.tokens_per_s}
    after = study.score(model, layer) if settings["steps"] else at_init
    study.save_caches()
    return {"recipe": name, "seed": seed, **asdict(recipe), "new_params": report.replaced_new_params,
            "init": init, **trained, "at_init": at_init.to_dict(), "after": after.to_dict()}


def _runs(records: list[dict], which: str):
    """HeldoutRuns of some runs' scores (`which`: at_init | after), aligned on the conversations' keys."""
    from kallm.report.stats import HeldoutRuns

    keys = sorted(records[0][which]["keys"])
    rows = [dict(zip(r[which]["keys"], r[which]["nll_sums"])) for r in records]
    tokens = dict(zip(records[0][which]["keys"], records[0][which]["n_tokens"]))
    return HeldoutRuns(np.array([[row[k] for k in keys] for row in rows]), np.array([tokens[k] for k in keys]))


def _cell(runs, original) -> tuple[str, str, str]:
    """(mean NLL, difference from the original [95% CI], quality retained) of some runs."""
    from kallm.evaluation.heldout.scoring import quality_retained
    from kallm.report.stats import nll_difference_ci

    nll = float(runs.per_run_nll.mean())
    ci = nll_difference_ci(runs, original)
    kept = quality_retained(float(original.per_run_nll.mean()), nll)
    return f"{nll:.3f}", f"{ci.mean:+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]", f"{100 * kept.retained:.1f}%"


def table(records: list[dict]) -> str:
    original = _runs([r for r in records if r["recipe"] == "original"], "after")
    base_nll = float(original.per_run_nll.mean())
    lines = [f"Original model: held-out NLL {base_nll:.4f} nats per assistant token "
             f"({original.tokens.shape[0]} conversations, {int(original.tokens.sum()):,} tokens); the target "
             f"(within 10%) is {1.1 * base_nll:.4f}.", "",
             "| recipe | new FFN params | seeds | NLL after init | Δ vs original [95% CI] | retained | NLL after "
             "recovery | Δ vs original [95% CI] | retained | init s | recovery s | tokens |",
             "|---|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["recipe"] for r in records if r["recipe"] != "original"):
        runs = [r for r in records if r["recipe"] == name]
        init, after = _cell(_runs(runs, "at_init"), original), _cell(_runs(runs, "after"), original)
        lines.append(f"| {name} | {runs[0]['new_params']:,} | {len(runs)} | {' | '.join(init)} | "
                     f"{' | '.join(after)} | {np.mean([r['init']['wall_s'] for r in runs]):.1f} | "
                     f"{np.mean([r['train_s'] for r in runs]):.1f} | {int(np.mean([r['tokens'] for r in runs])):,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="runs/recovery-study")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from kallm.io import read_jsonl
    from kallm.models.loading import load_model
    from kallm.registry import Registry

    registry: Registry[Recipe] = Registry("recipe")
    for name, recipe in RECIPES.items():
        registry.add(name, recipe)
    chosen = {name: registry.get(name) for name in args.recipes.split(",")}
    out = Path(args.out)
    study = Study(out)
    results = out / "results.jsonl"
    done = {(r["recipe"], r["seed"]) for r in read_jsonl(results)} if results.is_file() else set()
    todo = [("original", None, 0)] + [(n, r, s) for n, r in chosen.items() for s in args.seeds]
    for name, recipe, seed in todo:
        if (name, seed) in done:
            continue
        start = time.perf_counter()
        if recipe is None:
            model, _ = load_model("smollm2-135m-instruct")
            record = {"recipe": name, "seed": seed, "after": study.score(model, 25).to_dict()}
            study.save_caches()
        else:
            import shutil

            shutil.rmtree(out / "runs" / f"{name}.{seed}", ignore_errors=True)  # an interrupted attempt
            record = run_one(study, name, recipe, seed)
        record["wall_s"] = time.perf_counter() - start
        with open(results, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"{name} seed {seed}: {json.dumps({k: v for k, v in record.items() if k not in ('at_init', 'after')})}",
              flush=True)
    records = [r for r in read_jsonl(results) if r["recipe"] in chosen or r["recipe"] == "original"]
    text = table(records)
    (out / "recovery_study.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    main()
