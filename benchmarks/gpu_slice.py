"""A short slice of the study on one device: peak memory and tokens/s per variant.

    python benchmarks/gpu_slice.py [--steps 30] [--batch-size 8] [--max-length 1024] [--freeze blocks+embeddings]

The model has SmolLM2-135M's exact architecture (30 blocks, hidden 576, SwiGLU 1536, vocab 49152, tied
embeddings). Weights come from `--model` when it can be loaded (the embedded model, a folder or a hub id)
and are random otherwise: memory and speed do not depend on the weight values, and a GPU machine may
have neither the hub nor the embedded package. Each variant trains `--steps` steps with kallm's
training loop (bf16 autocast on CUDA) on real chat data; the table gives peak memory
(torch.cuda.max_memory_allocated, or peak RSS on CPU), tokens/s and trainable parameters, to set
against the study's 5.87 GB (linear restart) and 5.86 GB (KAN).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
                    eos_token_id=2, pad_token_id=2)


def build_model(name: str):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kallm.errors import KallmError
    from kallm.models.loading import load_model

    try:
        return load_model(name)
    except KallmError as exc:
        logging.warning("%s; using random weights of the same architecture", exc)
    tok_dir = REPO / "benchmarks" / "smollm2_tokenizer"
    if not tok_dir.is_dir():
        raise SystemExit(f"no model and no tokenizer at {tok_dir}: run `python {__file__} --save-tokenizer` "
                         "on a machine with the embedded model first")
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)), AutoTokenizer.from_pretrained(tok_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "chat"))
    p.add_argument("--variants", nargs="+", default=["linear", "kan:chebyshev2:2"])
    p.add_argument("--freeze", default="blocks+embeddings", help="the study's policy (46M / 39M trainable)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-conversations", type=int, default=2000)
    p.add_argument("--json", default=None)
    p.add_argument("--save-tokenizer", action="store_true", help="store the embedded tokenizer for GPU runs")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from kallm.data import load_conversations
    from kallm.retrofitting import retrofit
    from kallm.training import train_model
    from kallm.training.config import TrainConfig

    if args.save_tokenizer:
        from kallm.models.loading import load_model

        load_model(args.model)[1].save_pretrained(REPO / "benchmarks" / "smollm2_tokenizer")
        return
    conversations = load_conversations(args.data, max_conversations=args.max_conversations)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, eval_every=0,
                         eval_batches=1, val_size=8, save_every=0, lr=3e-4, warmup_steps=2)
    rows = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for variant in args.variants:
        model, tok = build_model(args.model)
        report = retrofit(model, layers="last:5", variant=variant, freeze=args.freeze, seed=0)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as out:
            result = train_model(model, tok, conversations, config, Path(out) / "run", progress=False)
        rows.append({"variant": variant, "freeze": args.freeze, "device": torch.cuda.get_device_name(0)
                     if device == "cuda" else "cpu", "trainable": report.trainable_params,
                     "peak_memory_gb": result.peak_memory_bytes / 1e9, "memory_kind": result.memory_kind,
                     "tokens_per_s": result.tokens_per_s, "steps": result.steps, "tokens": result.tokens})
        del model
    print(f"| variant | freeze | trainable | peak memory (GB, {rows[0]['memory_kind']}) | tokens/s |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['freeze']} | {r['trainable']:,} | {r['peak_memory_gb']:.2f} | "
              f"{r['tokens_per_s']:,.0f} |")
    print("| study: linear restart |  | 46M | 5.87 | |\n| study: KAN | | 39M | 5.86 | |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
