#!/usr/bin/env bash
# GPU checks for a lent GPU machine (run through the device tool from the repo root, with the
# wheels of the missing packages in .whl/): the CUDA paths of the bundles, trainers, detector and
# handler -- AMP training through monai.bundle, TorchScript export of the trained network, sampling and
# embedding on the GPU, the scan's GPU search (faiss GPU when installed, else torch CUDA), a 2-rank NCCL
# training when 2 GPUs exist (else a skip with a message) -- and the test suite's GPU-relevant parts with
# the configs' default device (cuda:0 when present). Sized for under 8 minutes on one GPU; the summary goes
# to $OUT/gpu_check.md (copy it to scripts/benchmarks/results/).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
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
timeout 200 python3 -m pytest -q -p no:cacheprovider -W ignore tests/test_ldm_bundles.py tests/test_engines_ldm.py \
  tests/test_handler.py tests/test_contrastive.py tests/test_copy_detector_bundle.py tests/test_detection_scan.py 2>&1 | tail -n 25 | tee "$OUT/pytest_gpu.log"
echo "wall=$(( $(date +%s) - start ))s"
echo "== 3. the trained network exported with MONAI's ckpt_export defaults (TorchScript), on the GPU"
python3 -m monai.bundle ckpt_export --bundle_root /tmp/ldm_xr --config_file "['bundles/ldm_xr/configs/inference.json','bundles/ldm_xr/configs/quick.json']" \
  --meta_file bundles/ldm_xr/configs/metadata.json > "$OUT/ckpt_export.log" 2>&1; echo "rc=$?"; ls -la /tmp/ldm_xr/models/model.ts
python3 - <<'PY'
import torch
m = torch.jit.load("/tmp/ldm_xr/models/model.ts", map_location="cuda")
x = torch.randn(2, 3, 16, 16, device="cuda")
print("exported network on cuda:", tuple(m(x, torch.tensor([0, 999], device="cuda")).shape))
PY
echo "== 4. the scan's GPU search"
python3 - <<'PY'
import time, numpy as np, faiss
from monai_memorization.detection.index import faiss_has_gpu, resolve_backend
from monai_memorization.detection.scan import scan_embeddings
print("faiss", faiss.__version__, "GPU support:", faiss_has_gpu(), "GPUs seen by faiss:", getattr(faiss, "get_num_gpus", lambda: 0)())
if not faiss_has_gpu():
    print("SKIP faiss-gpu: the faiss here has no GPU support (faiss-gpu is not carried); the torch CUDA path runs")
print("backend:", resolve_backend("auto"))
rng = np.random.default_rng(0)
tr, ho, sy = (rng.normal(size=(n, 128)).astype(np.float32) for n in (200_000, 20_000, 20_000))
sy[:100] = tr[:100]
for use_gpu in (True, False):
    t = time.perf_counter()
    r = scan_embeddings(tr, ho, sy, n_bootstrap=0, use_gpu=use_gpu, search="exact")
    print(f"scan_embeddings 200k x 20k x 20k use_gpu={use_gpu}: {time.perf_counter() - t:.2f} s, copies {r.n_copies}")
PY
echo "== 5. data-parallel training with NCCL"
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  torchrun --nproc_per_node 2 -m monai.bundle run training --config_file "['bundles/ldm_xr/configs/train.json','bundles/ldm_xr/configs/quick.json','bundles/ldm_xr/configs/multi_gpu_train.json']" \
    --bundle_root /tmp/ldm_xr_ddp > "$OUT/ddp.log" 2>&1; echo "rc=$?"
else
  echo "SKIP: $(nvidia-smi -L | wc -l) GPU here; the 2-rank NCCL run needs 2 (tests/test_ddp_cpu.py runs 2 gloo ranks on the CPU)"
fi
{ echo "# GPU check ($(date -u +%F))"; echo; echo '```'; grep -vE "it/s|%\|" "$OUT/gpu_check.log" | tail -n 60; echo '```'; } > "$OUT/gpu_check.md"
