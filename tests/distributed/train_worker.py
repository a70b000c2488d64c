"""A small real training run, started as a separate process by tests (torchrun for DDP, SIGKILL tests).

usage: python -m tests.distributed.train_worker OUT_DIR DATA_FILE STEPS BATCH_SIZE [--resume] [--save-every N]
"""

from __future__ import annotations

import argparse

import torch

torch.set_num_threads(1)


def tiny_frozen_model(vocab_size: int):
    """The tiny Llama of the tests with only its last two decoder layers trainable."""
    from tests.tiny_models import make_tiny_model

    model = make_tiny_model("llama", vocab_size=vocab_size, seed=0)
    model.requires_grad_(False)
    for layer in model.model.layers[2:]:
        layer.requires_grad_(True)
    return model


def worker_config(steps: int, batch_size: int, save_every: int = 0, prefix_cache: bool = False):
    from kallm.training.config import TrainConfig

    return TrainConfig(steps=steps, batch_size=batch_size, max_length=128, lr=1e-3, warmup_steps=2, eval_every=0,
                       val_size=8, save_every=save_every, prefix_cache=prefix_cache, precision="fp32")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("data")
    parser.add_argument("steps", type=int)
    parser.add_argument("batch_size", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--prefix-cache", action="store_true")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from kallm.data import load_conversations
    from kallm.models.loading import embedded_model_dir
    from kallm.training import train_model

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = worker_config(args.steps, args.batch_size, args.save_every, args.prefix_cache)
    train_model(tiny_frozen_model(len(tokenizer)), tokenizer, load_conversations(args.data), config, args.out,
                resume=args.resume, progress=False)


if __name__ == "__main__":
    main()
