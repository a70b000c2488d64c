"""kallm export: every variant kind and every architecture exports to a folder that loads without kallm.

One module-scoped fixture builds all exports (tiny real architectures, new weights perturbed so that a
wrong or missing weight shows), and one subprocess, in which `import kallm` fails, loads them all.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kallm.errors import KallmError
from kallm.kan import list_bases
from kallm.retrofitting.saving import load_retrofit, save_retrofit
from kallm.retrofitting.surgery import retrofit
from tests.export.without_kallm import outputs_without_kallm, perturb_new_weights
from tests.tiny_models import TINY_CONFIGS, make_tiny_model, make_tiny_tokenizer

IDS = torch.randint(3, 250, (2, 10), generator=torch.Generator().manual_seed(2))
NEW_TOKENS = 6

# (case name, architecture, variant): every variant kind on llama, every basis, and a parallel KAN on
# every architecture the surgery supports (OPT: split fc1/fc2 FFNs; GPT-2: Conv1D projections).
CASES = [
    ("baseline", "llama", "baseline"),
    ("linear", "llama", "linear"),
    ("linear-budget", "llama", "linear@budget=0.5"),
    ("linear-hidden", "llama", "linear@hidden=24"),
    *[(f"kan-{basis}", "llama", f"kan:{basis}:2") for basis in list_bases()],
    ("kan-parallel", "llama", "kan:parallel(chebyshev2:2,legendre:3)"),
    ("kan-sequential", "llama", "kan:sequential(chebyshev2:2,legendre:2)"),
    ("kan-sequential-budget", "llama", "kan:sequential(chebyshev2:2,chebyshev2:2)@budget=match"),
    *[(f"parallel-{arch}", arch, "kan:parallel(chebyshev2:2,fourier:1)") for arch in TINY_CONFIGS if arch != "llama"],
    ("linear-budget-opt", "opt", "linear@budget=0.5"),
    ("linear-hidden-gpt2", "gpt2", "linear@hidden=16"),
    ("pruned-budget", "llama", "pruned@budget=0.5"),
    ("pruned-opt", "opt", "pruned@hidden=24"),
]
# These go the user's way: save_retrofit -> export_pretrained(folder) (which rebuilds the retrofit with
# load_retrofit) and are compared with load_retrofit's model; the others are exported from the model in
# memory (a second from_pretrained per case would double the test's time for no new code path).
VIA_FOLDER = {"kan-chebyshev2", "kan-sequential-budget", "parallel-gpt2", "linear-budget-opt", "pruned-budget"}


def _outputs(model) -> dict[str, torch.Tensor]:
    from kallm.retrofitting.surgery_report import retrofit_report

    with torch.no_grad():
        logits = model(input_ids=IDS).logits
        generated = model.generate(IDS[:1], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                   pad_token_id=0)
    return {"logits": logits, "generated": generated,
            "new_params": torch.tensor(retrofit_report(model).replaced_new_params)}


def _retrofitted(base: torch.nn.Module, variant: str) -> torch.nn.Module:
    model = copy.deepcopy(base)
    retrofit(model, layers="last:2", variant=variant, seed=1)
    return perturb_new_weights(model)


def _export_all(root: Path) -> tuple[dict[str, Path], dict[str, dict[str, torch.Tensor]]]:
    from kallm.export.pretrained import export_pretrained

    tokenizer = make_tiny_tokenizer()
    bases: dict[str, tuple[Path, torch.nn.Module]] = {}
    folders, references = {}, {}
    for name, arch, variant in CASES:
        if arch not in bases:
            bases[arch] = (root / f"base-{arch}", make_tiny_model(arch, vocab_size=256))
            bases[arch][1].save_pretrained(bases[arch][0])
            tokenizer.save_pretrained(bases[arch][0])
        model = _retrofitted(bases[arch][1], variant)
        if name in VIA_FOLDER:
            retro = save_retrofit(model, root / f"{name}-retrofit", base_model=str(bases[arch][0]))
            folders[name] = export_pretrained(retro, root / name, verify=False)
            model = load_retrofit(retro)[0]
        else:
            folders[name] = export_pretrained(model, root / name, tokenizer=tokenizer, verify=False)
        references[name] = _outputs(model)
    return folders, references


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{case: (export folder, kallm's reference outputs, the outputs of the export loaded without kallm)}."""
    root = tmp_path_factory.mktemp("export")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 32-wide matmuls: more threads only add synchronisation (10x on a busy machine)
    try:
        folders, references = _export_all(root)
    finally:
        torch.set_num_threads(threads)
    got = outputs_without_kallm(root, folders, IDS, NEW_TOKENS, sorted(VIA_FOLDER))
    shipped_bases = json.loads((root / "results.json").read_text())["bases"]
    assert shipped_bases == sorted(list_bases())  # every family registers itself in the shipped code too
    return {name: (folders[name], references[name], got[name]) for name in folders}


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_export_loads_without_kallm_and_matches_load_retrofit(exported, name):
    folder, expected, got = exported[name]
    torch.testing.assert_close(got["logits"], expected["logits"], rtol=0, atol=1e-5)
    assert torch.equal(got["generated"], expected["generated"])
    if name in VIA_FOLDER:  # save_pretrained -> from_pretrained of the loaded export keeps the model as it was
        torch.testing.assert_close(got["resaved_logits"], got["logits"], rtol=0, atol=0)
        assert torch.equal(got["regenerated"], got["generated"])
    assert int(got["new_params"]) == int(expected["new_params"])  # the same modules were rebuilt
    assert json.loads((folder / "config.json").read_text())["model_type"].startswith("kallm_")


# lm-eval's own bbh_zeroshot_boolean_expressions task, reading the shared BBH file instead of the hub.
LM_EVAL_TASK = """task: kallm_bbh_zeroshot_boolean_expressions
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  field: examples
test_split: test
description: "Evaluate the result of a random Boolean expression.\\n\\n"
doc_to_text: "Q: {{{{input}}}}\\nA:"
doc_to_target: "{{{{target}}}}"
output_type: generate_until
generation_kwargs:
  until: ["</s>", "Q:", "<|im_end|>"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: 8
num_fewshot: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
"""


def lm_eval_python() -> str | None:
    """An interpreter with lm_eval: $KALLM_LM_EVAL_PYTHON (e.g. a side venv without kallm), else this one."""
    import importlib.util

    if os.environ.get("KALLM_LM_EVAL_PYTHON"):
        return os.environ["KALLM_LM_EVAL_PYTHON"]
    return sys.executable if importlib.util.find_spec("lm_eval") else None


def test_lm_eval_runs_on_an_export(exported, shared_data, tmp_path):
    python = lm_eval_python()
    if python is None:
        pytest.skip("lm_eval is not installed (set KALLM_LM_EVAL_PYTHON to an interpreter that has it)")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "kallm_bbh.yaml").write_text(LM_EVAL_TASK.format(data=shared_data / "bbh" / "boolean_expressions.json"))
    folder = exported["kan-chebyshev2"][0]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": "",
           "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    cmd = [python, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={folder},trust_remote_code=True",
           "--tasks", "kallm_bbh_zeroshot_boolean_expressions", "--include_path", str(tasks), "--limit", "4",
           "--batch_size", "2", "--device", "cpu", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(result_file.read_text())
    task = "kallm_bbh_zeroshot_boolean_expressions"
    assert 0.0 <= results["results"][task]["exact_match,none"] <= 1.0
    assert results["n-samples"][task] == {"original": 250, "effective": 4}
    assert str(results["config"]["model_args"]["trust_remote_code"]) == "True"
    assert results["config"]["model_args"]["pretrained"] == str(folder)


def test_export_checks_itself_and_keeps_nothing_when_the_check_fails(tmp_path, monkeypatch):
    from transformers.utils import HF_MODULES_CACHE

    from kallm.export import pretrained as export_module
    from kallm.retrofitting.kinds import KanKind

    model = make_tiny_model("llama", vocab_size=256)
    retrofit(model, layers="last:1", variant="kan:chebyshev2:2")
    out = export_module.export_pretrained(model, tmp_path / "ok", tokenizer=make_tiny_tokenizer())  # verify=True
    assert {"config.json", "model.safetensors", "modeling_kallm.py", "tokenizer.json", "README.md",
            "generation_config.json"} <= {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["ok"]  # the temporary sibling is gone
    # transformers' copy of the temporary folder's code is gone too
    assert not [p for p in (Path(HF_MODULES_CACHE) / "transformers_modules").glob("*") if "_dot_ok_dot_" in p.name]

    describe = KanKind.describe  # a wrong description of the KAN:
    monkeypatch.setattr(KanKind, "describe", lambda self, *args: {**describe(self, *args), "kan": "chebyshev2:3"})
    with pytest.raises(KallmError, match="does not load back"):
        export_module.export_pretrained(model, tmp_path / "bad", tokenizer=make_tiny_tokenizer())
    assert [p.name for p in tmp_path.iterdir()] == ["ok"]


def test_export_refuses_a_folder_in_use_and_replaces_only_an_earlier_export(tmp_path):
    from kallm.export.pretrained import export_pretrained
    from kallm.io import OUTPUT_MARKER

    model = make_tiny_model("gpt2", vocab_size=256)
    retrofit(model, layers="last:1", variant="linear")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(KallmError, match="exists and is not empty; use --overwrite"):
        export_pretrained(model, tmp_path / "out", verify=False)
    with pytest.raises(KallmError, match=f"not a folder kallm wrote \\(it has no {OUTPUT_MARKER}\\)"):
        export_pretrained(model, tmp_path / "out", verify=False, overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    export_pretrained(model, tmp_path / "export", verify=False)
    (tmp_path / "export" / "stale.txt").write_text("from before")
    export_pretrained(model, tmp_path / "export", verify=False, overwrite=True)
    assert not (tmp_path / "export" / "stale.txt").exists() and (tmp_path / "export" / "model.safetensors").is_file()
    assert (tmp_path / "export" / OUTPUT_MARKER).is_file()


def test_only_models_of_transformers_classes_export(tmp_path):
    from transformers import LlamaForCausalLM

    from kallm.export.pretrained import export_pretrained

    class MyLlama(LlamaForCausalLM):
        pass

    model = MyLlama(make_tiny_model("llama", vocab_size=256).config)
    retrofit(model, layers="last:1", variant="kan:chebyshev2:2")
    with pytest.raises(KallmError, match="MyLlama is not a class of transformers"):
        export_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_embedded_models_kan_retrofit_exports(embedded_dir, tmp_path):
    """SmolLM2-135M-Instruct, last:5 KAN: exported, loaded back through transformers and checked (verify)."""
    from kallm.export.pretrained import export_pretrained
    from kallm.models.loading import load_model

    model, tokenizer = load_model(str(embedded_dir))
    report = retrofit(model, layers="last:5", variant="kan:chebyshev2:2")
    out = export_pretrained(model, tmp_path / "smollm2-kan", tokenizer=tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert config["kallm"]["layer_indices"] == [25, 26, 27, 28, 29] and config["model_type"] == "kallm_llama"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_kallm.KallmLlamaForCausalLM"
    assert f"Trained: {report.trainable_params:,}" in (out / "README.md").read_text()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out, trust_remote_code=True).chat_template == tokenizer.chat_template
