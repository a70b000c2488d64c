"""The report's per-set table, the verdict's trained-on / never-seen sets and worst set, and the Data section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kallm.report import write_report
from kallm.report.heldout_comparisons import N_RESAMPLES
from kallm.report.stats import HeldoutRuns, nll_difference_ci
from tests.report.test_report import table_rows

# set -> (number of examples, how much worse than the original each variant is there, per token)
SETS = {"heldout": 30, "heldout:gsm8k_train": 18, "heldout:hh_helpful": 12, "wiki": 20}
SHIFT = {"baseline": {}, "kan": {"heldout:hh_helpful": 0.8, "wiki": 0.3}, "linear": {"wiki": 1.2}}
DATA = {"seed": 0, "max_conversations": 1200, "mix": None,
        "loaded": {"gsm8k_train": {"conversations": 710}, "hh_helpful": {"conversations": 490}},
        "train": {"gsm8k_train": {"conversations": 692, "tokens": 150_000},
                  "hh_helpful": {"conversations": 478, "tokens": 120_000}},
        "heldout": {"gsm8k_train": {"conversations": 18, "tokens": 2000},
                    "hh_helpful": {"conversations": 12, "tokens": 1500}}}


def make_grid(run_dir: Path) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    base = {n: (rng.normal(2.0, 0.3, size=k), rng.integers(20, 90, size=k).astype(float)) for n, k in SETS.items()}
    base["heldout"] = tuple(np.concatenate([base["heldout:gsm8k_train"][i], base["heldout:hh_helpful"][i]])
                            for i in range(2))
    scored, records = {}, []
    for variant, shifts in SHIFT.items():
        sets, stages = {}, {}
        for name, (per_token, tokens) in base.items():
            shift = shifts.get(name, 0.0)
            if name == "heldout":
                shift = np.concatenate([np.full(18, shifts.get("heldout:gsm8k_train", 0.0)),
                                        np.full(12, shifts.get("heldout:hh_helpful", 0.0))])
            sums = (per_token + shift) * tokens
            scored[(variant, name)] = (sums, tokens)
            keys = [f"{name}-{i}" for i in range(len(tokens))]
            stages[name] = {"name": name, "keys": keys, "nll_sums": sums.tolist(), "n_tokens": tokens.tolist()}
            sets[name] = {"nll": float(sums.sum() / tokens.sum()), "n_conversations": len(tokens),
                          "n_tokens": int(tokens.sum())}
        folder = run_dir / "runs" / variant
        folder.mkdir(parents=True)
        (folder / "heldout.json").write_text(json.dumps({"final": stages}))
        spec = {"baseline": "baseline", "kan": "kan:chebyshev2:2", "linear": "linear"}[variant]
        records.append({"run_id": variant, "variant": variant, "spec": spec, "seed": None if variant == "baseline"
                        else 0, "heldout": {**sets["heldout"], "set": "heldout", "sets": sets},
                        "data": {**DATA, **({"fit": {"gsm8k_train": {"conversations": 40, "tokens": 9000}}}
                                            if variant == "kan" else {})}})
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return scored


def test_the_first_table_has_a_column_per_set_with_the_paired_interval(tmp_path):
    scored = make_grid(tmp_path)
    text = write_report(tmp_path).read_text()
    first_table = next(line for line in text.splitlines() if line.startswith("| "))
    assert first_table == ("| variant | heldout (trained-on source) | heldout:gsm8k_train (trained-on source) | "
                           "heldout:hh_helpful (trained-on source) | wiki (unseen) |")
    rows = table_rows(text, "variant | heldout (trained-on source)")
    sums, tokens = scored[("kan", "wiki")]
    orig_sums, _ = scored[("baseline", "wiki")]
    ci = nll_difference_ci(HeldoutRuns(sums[None], tokens), HeldoutRuns(orig_sums[None], tokens), N_RESAMPLES)
    original = orig_sums.sum() / tokens.sum()
    expected = (f"{sums.sum() / tokens.sum():.3f} ({100 * ci.mean / original:+.1f}% "
                f"[{100 * ci.low / original:+.1f}, {100 * ci.high / original:+.1f}])")
    assert rows["kan"][3] == expected
    assert rows["baseline"][3] == f"{original:.3f}"
    assert 100 * ci.mean / original == pytest.approx(100 * 0.3 * tokens.sum() / orig_sums.sum())


def test_the_verdict_names_trained_and_unseen_sets_and_each_worst_set(tmp_path):
    make_grid(tmp_path)
    text = write_report(tmp_path).read_text()
    verdict = text.split("## Verdict")[1].split("\n## ")[0]
    assert ("The retrofits were trained on gsm8k_train, hh_helpful; held-out sets from those sources: heldout, "
            "heldout:gsm8k_train, heldout:hh_helpful.") in verdict
    assert "Sets never seen in training: wiki." in verdict
    assert "kan on heldout:hh_helpful +" in verdict and "linear on wiki +" in verdict


def test_the_data_section_lists_per_file_counts(tmp_path):
    make_grid(tmp_path)
    text = write_report(tmp_path).read_text()
    assert text.index("## Data") < text.index("## Provenance")
    rows = table_rows(text, "source | sampled")
    assert rows["gsm8k_train"] == ["710", "692 / 150,000", "40 / 9,000", "18 / 2,000"]
    assert rows["hh_helpful"] == ["490", "478 / 120,000", "—", "12 / 1,500"]
    assert rows["wiki (eval.heldout)"][3] == f"20 / {json.loads((tmp_path / 'results.jsonl').read_text().splitlines()[0])['heldout']['sets']['wiki']['n_tokens']:,}"
