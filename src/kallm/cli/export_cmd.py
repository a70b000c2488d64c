"""`kallm export`: write a retrofit as a self-contained Hugging Face model folder (no kallm needed to load it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kallm.folders import layout


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a retrofit as a Hugging Face model folder that loads without kallm",
        description=f"Write RETROFIT_DIR (a folder written by save_retrofit, or a run folder holding one in "
                    f"{layout.RETROFIT}/) as OUT_DIR: full weights, {layout.HF_CONFIG} with an auto_map to the "
                    "folder's own model code, tokenizer, generation config and a model card. Load it anywhere with "
                    "AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True).")
    p.add_argument("retrofit_dir", type=Path, metavar="RETROFIT_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--base-model", default=None,
                   help="the base model to rebuild the retrofit on (default: the one its manifest names)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT_DIR if it is an earlier export (never a source or a folder kallm did not write)")
    p.add_argument("--allow-trained-base", action="store_true",
                   help="load base model weights the retrofit trained (freeze blocks, blocks+embeddings, none)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip loading the export back through transformers and comparing its logits")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kallm.export.pretrained import export_pretrained

    out = export_pretrained(args.retrofit_dir, args.out_dir, base_model=args.base_model, overwrite=args.overwrite,
                            verify=args.verify, allow_trained_base=args.allow_trained_base)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    checked = "; loaded back through transformers and checked" if args.verify else ""
    print(f"exported {args.retrofit_dir} to {out} ({size / 2**20:,.1f} MiB){checked}\n"
          f"load it with: AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0
