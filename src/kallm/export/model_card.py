"""The model card (README.md) of an exported retrofit: what was replaced, counts, results, provenance.

Results are whatever the retrofit's folder knows: `kallm train` records its training result in the
manifest (`training`); a grid run (`kallm run`) leaves its retrofit in `<grid>/runs/<run_id>/retrofit`
and its record, with the held-out losses and the BIG-Bench Hard scores, in `<grid>/results.jsonl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kallm import __version__
from kallm.folders.layout import HF_CONFIG, ExperimentFolder
from kallm.folders.records import RunRecord, read_run_records
from kallm.models.loading import EMBEDDED_MODEL, EMBEDDED_SOURCE
from kallm.retrofitting.surgery_report import RetrofitReport


def _grid_records(folder: Path) -> tuple[RunRecord | None, RunRecord | None]:
    """(this run's record, the grid's untouched-baseline record) when `folder` is a grid run's retrofit."""
    run_dir = folder.resolve().parent
    grid = ExperimentFolder.of_run(run_dir)
    if grid is None:
        return None, None
    rows = read_run_records(grid.results)
    own = next((r for r in rows if r.run_id == run_dir.name), None)
    baseline = next((r for r in rows if r.kind == "baseline"), None)
    return own, baseline


def known_results(folder: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """{"held_out": {...}, "bbh": {...}} as far as the retrofit folder's manifest and grid record tell."""
    record, baseline = _grid_records(Path(folder))
    training = (record.train if record else None) or manifest.get("training")
    results: dict[str, Any] = {}
    if training and training.get("final_eval_loss") is not None:
        results["held_out"] = {key: training.get(key) for key in
                               ("initial_eval_loss", "final_eval_loss", "final_train_loss", "steps", "tokens")}
    if record and isinstance(record.scores, dict):
        results["bbh"] = {"metric": record.metric, "average": record.scores.get("average"),
                          "per_task": record.scores.get("per_task") or {}, **(record.eval or {})}
        if baseline and isinstance(baseline.scores, dict):
            results["bbh"]["baseline_average"] = baseline.scores.get("average")
    return results


def hub_id(base_model: str) -> str | None:
    """The base model's hub id (org/name), when it has one; a local path would be a dead link."""
    if base_model == EMBEDDED_MODEL:
        return EMBEDDED_SOURCE
    hub = "/" in base_model and not Path(base_model).expanduser().exists() and not base_model.startswith((".", "/"))
    return base_model if hub else None


def _front_matter(base_model: str, info: dict[str, Any]) -> str:
    hub = hub_id(base_model)
    lines = ["---", "library_name: transformers", *([f"base_model: {hub}"] if hub else []),
             "tags:", "- kallm", "- kolmogorov-arnold-network", f"- {info['variant'].split(':')[0].split('@')[0]}",
             "---", ""]
    return "\n".join(lines)


def _replaced_section(report: RetrofitReport) -> str:
    if not report.variant.trained:
        return "Nothing was replaced: this is the untouched base model (the study's `baseline`).\n"
    rows = ["| layer | before | after | parameters before | parameters after |", "| --- | --- | --- | ---: | ---: |"]
    rows += [f"| {r.layer} | {r.old_kind} | {r.new_kind} | {r.old_params:,} | {r.new_params:,} |"
             for r in report.layers]
    base_total = report.total_params - report.replaced_new_params + report.replaced_old_params
    width = f"; hidden width {report.hidden_width}" if report.hidden_width else ""
    return (f"The feed-forward blocks of decoder layers {', '.join(map(str, report.layer_indices))} (of "
            f"{report.n_layers}) were replaced with `{report.variant}`{width}.\n\n" + "\n".join(rows) +
            f"\n\nParameters: {report.total_params:,} in all (the base model has {base_total:,}); the replaced "
            f"FFNs had {report.replaced_old_params:,}, their replacements have {report.replaced_new_params:,}. "
            f"Trained: {report.trainable_params:,} (freeze policy `{report.freeze}`).\n")


def _results_section(results: dict[str, Any]) -> str:
    if not results:
        return "No results were recorded with this retrofit (it was not made by `kallm train` or `kallm run`).\n"
    parts = []
    held = results.get("held_out")
    if held:
        parts.append(f"Held-out chat loss (mean next-token cross-entropy on assistant tokens): "
                     f"{held['initial_eval_loss']:.4f} right after surgery, {held['final_eval_loss']:.4f} after "
                     f"{held['steps']} training steps ({held['tokens']:,} tokens).")
    bbh = results.get("bbh")
    if bbh and bbh.get("average") is not None:
        base = bbh.get("baseline_average")
        versus = f" (the untouched base model, same evaluation: {100 * base:.1f} %)" if base is not None else ""
        parts.append(f"BIG-Bench Hard ({bbh.get('mode')} mode, {bbh.get('n_examples')} examples, at most "
                     f"{bbh.get('limit')} per task), {bbh.get('metric')}: {100 * bbh['average']:.1f} %{versus}.")
        rows = [f"| {task} | {100 * value:.1f} |" for task, value in sorted(bbh["per_task"].items())]
        if rows:
            parts.append("| task | % |\n| --- | ---: |\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"


# What each freeze policy trains besides the new FFNs (`kallm.retrofitting.freeze`).
_TRAINED_BASE = {"blocks": "the rest of the retrofitted decoder layers (attention, norms)",
                 "blocks+embeddings": "the rest of the retrofitted decoder layers and the embeddings",
                 "none": "every weight"}


def model_card(title: str, base_model: str, info: dict[str, Any], report: RetrofitReport,
               results: dict[str, Any]) -> str:
    """README.md of an exported retrofit."""
    usage = (f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
             f"model = AutoModelForCausalLM.from_pretrained(\"{title}\", trust_remote_code=True)\n"
             f"tokenizer = AutoTokenizer.from_pretrained(\"{title}\", trust_remote_code=True)\n```\n\n"
             "It needs torch and transformers only: the model code is in this folder (`modeling_kallm.py`, "
             "`configuration_kallm.py`, and the `kallm_*.py` files: kallm's own KAN layer code, copied). "
             "`model.freeze_like_retrofit()` sets `requires_grad` as kallm trained it, for further training "
             "with your own stack. The model type is `kallm_<base>`, so loading without `trust_remote_code=True` "
             f"fails rather than build the base model without its new FFNs (AutoTokenizer reads {HF_CONFIG} "
             "too, hence the flag there).\n\nEvaluate it with lm-evaluation-harness:\n\n```bash\nlm_eval --model hf "
             f"--model_args pretrained={title},trust_remote_code=True --tasks bbh_zeroshot --batch_size 8\n```\n")
    how = (f"Made with kallm {info['kallm_version']} from `{base_model}`: variant `{info['variant']}`, layers "
           f"`{info['layers']}`, freeze policy `{info['freeze']}`, seed {info['seed']}; exported by kallm "
           f"{__version__}. The config's `kallm` section records how each replaced FFN is rebuilt.\n")
    hub = hub_id(base_model)
    named = f"`{base_model}`" + (f" ([{hub}](https://huggingface.co/{hub}))" if hub and hub != base_model else "")
    trained = "" if info["freeze"] == "ffn" else (
        f" Base model weights were trained too (freeze policy `{info['freeze']}`: "
        f"{_TRAINED_BASE.get(info['freeze'], 'see kallm.retrofitting.freeze')}); they differ from `{base_model}`'s.")
    return (_front_matter(base_model, info) + f"# {title}\n\n{named} with its feed-forward blocks "
            f"retrofitted by kallm (`{info['variant']}` on layers `{info['layers']}`).{trained}\n\n## Use\n\n{usage}\n"
            f"## What was replaced\n\n{_replaced_section(report)}\n## Results\n\n{_results_section(results)}\n"
            f"## How it was made\n\n{how}")
