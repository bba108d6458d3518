#!/usr/bin/env bash
# GPU checks for a lent GPU machine (run through the device tool from the repo root, with the
# wheels of the missing packages in .whl/): the CUDA paths of the bundles, trainers, detector and
# handler -- AMP training through monai.bundle, sampling and embedding on the GPU -- and the test
# suite's GPU-relevant parts with the configs' default device (cuda:0 when present).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/plugin
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi -L
python3 -c "import torch, monai, ignite, faiss, mlflow; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__, 'faiss', faiss.__version__, 'mlflow', mlflow.__version__)"
echo "== 1. the user's command on CUDA with AMP (X-ray, quick preset)"
start=$(date +%s)
python3 -m monai.bundle run training --config_file "['bundles/ldm_xr/configs/train.json','bundles/ldm_xr/configs/quick.json']" \
  --amp true --bundle_root /tmp/ldm_xr > "$OUT/ldm_xr_gpu.log" 2>&1
echo "rc=$? wall=$(( $(date +%s) - start ))s"; grep -iE "error|Traceback|val_psnr|train_loss" "$OUT/ldm_xr_gpu.log" | tail -n 8
ls /tmp/ldm_xr/models
echo "== 2. GPU-relevant tests (configs choose cuda:0)"
start=$(date +%s)
timeout 330 python3 -m pytest -q -p no:cacheprovider -W ignore tests/test_ldm_bundles.py tests/test_engines_ldm.py \
  tests/test_handler.py tests/test_contrastive.py tests/test_copy_detector_bundle.py tests/test_detection_scan.py 2>&1 | tail -n 25 | tee "$OUT/pytest_gpu.log"
echo "wall=$(( $(date +%s) - start ))s"
