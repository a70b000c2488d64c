"""Load exported model folders the way a user without kallm would; run by test_export.py in a subprocess.

    python export_check.py CASES.json RESULTS.safetensors

CASES.json: {"ids": [[...]], "max_new_tokens": n, "folders": {name: path}, "resave": [name, ...]}. For
every folder: load it with AutoModelForCausalLM (trust_remote_code=True), compute logits and a greedy
generation (for the "resave" ones also save it again with save_pretrained and load that copy), and
write every tensor to RESULTS.safetensors; the test compares them with kallm's own model. `import kallm` is made to fail before anything is imported.
"""

from __future__ import annotations

import sys

sys.modules["kallm"] = None  # type: ignore[assignment]  # from here on, `import kallm` raises ImportError

import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def outputs(model, ids: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        generated = model.generate(ids[:1], max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                   do_sample=False, pad_token_id=0)
    return logits, generated


def check(folder: str, ids: torch.Tensor, max_new_tokens: int, resave: bool) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    logits, generated = outputs(model, ids, max_new_tokens)
    found = {"logits": logits, "generated": generated,
             "new_params": torch.tensor(sum(p.numel() for n, p in model.named_parameters() if ".kallm_ffn." in n))}
    if not resave:
        return found
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        again = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=True).eval()
        resaved, regenerated = outputs(again, ids, max_new_tokens)
        files = sorted(p.name for p in Path(tmp).iterdir())
    assert "modeling_kallm.py" in files and "kallm_kan_fused.py" in files, files
    return {**found, "resaved_logits": resaved, "regenerated": regenerated}


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    try:
        import kallm  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("kallm is importable; the check must run without it")
    torch.set_num_threads(1)  # tiny models: more threads only add synchronisation
    ids = torch.tensor(cases["ids"])
    results = {}
    for name, folder in cases["folders"].items():
        for key, value in check(folder, ids, cases["max_new_tokens"], name in cases["resave"]).items():
            results[f"{name}/{key}"] = value.contiguous()
    save_file(results, sys.argv[2])
    # the basis registry of the shipped KAN code, as loading a model's code filled it
    registries = [m.BASES.names() for name, m in sys.modules.items() if name.endswith(".kallm_kan_bases")]
    Path(sys.argv[2]).with_suffix(".json").write_text(json.dumps({"bases": sorted(registries[0])}))


if __name__ == "__main__":
    main()
