#!/usr/bin/env bash
# One prepared GPU check (fits the device tool's budget): a short slice of the study on CUDA (bf16),
# peak memory and tokens/s per variant.
# Usage on the GPU machine, from the repo root (python3 there has torch, transformers, accelerate):
#   bash benchmarks/gpu.sh            # writes $OUT/gpu_slice.json when OUT is set
# The GPU machine has neither the hub nor the embedded model package: prepare here first with
#   .venv/bin/python benchmarks/gpu_slice.py --save-tokenizer     (writes benchmarks/smollm2_tokenizer/, git-ignored)
# and carry benchmarks/smollm2_tokenizer plus a chat .jsonl (e.g. copied to .gpu/chat.jsonl, KALLM_GPU_CHAT=.gpu/chat.jsonl).
# The model then has SmolLM2-135M's exact architecture with random weights (same memory and speed).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA="${KALLM_GPU_CHAT:-../shared/data/chat}"
OUTDIR="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
timeout 420 python3 benchmarks/gpu_slice.py --data "$DATA" --steps "${STEPS:-30}" --batch-size "${BATCH:-8}" \
  --max-length "${MAXLEN:-1024}" --json "$OUTDIR/gpu_slice.json"
