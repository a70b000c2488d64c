#!/usr/bin/env bash
# One prepared GPU check (fits the device tool's budget): a short slice of the study on CUDA (bf16),
# peak memory and tokens/s per variant.
# Usage on the GPU machine, from the repo root (python3 there has torch, transformers, accelerate):
#   bash benchmarks/gpu.sh            # writes $OUT/gpu_slice.json when OUT is set
# Chat data: ../shared/data/chat if present, else $KALLM_GPU_CHAT (carry a small .jsonl with the run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 KALLM_NO_PROGRESS=1
DATA="${KALLM_GPU_CHAT:-../shared/data/chat}"
OUTDIR="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total --format=csv || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
timeout 420 python3 benchmarks/gpu_slice.py --data "$DATA" --steps "${STEPS:-30}" --batch-size "${BATCH:-8}" \
  --max-length "${MAXLEN:-1024}" --json "$OUTDIR/gpu_slice.json"
