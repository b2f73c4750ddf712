#!/usr/bin/env bash
# Verify sr-shrink's CUDA paths end to end on a CUDA machine, in about 5 minutes (issue 11):
#   1. CUDA is visible to torch and a bf16 teacher forward runs (--teacher-dtype auto picks bf16 there);
#   2. distill on the GPU with --amp (bf16 student autocast) and the bf16 teacher, x2 and x4 bundled teachers;
#   3. a kill + --resume on the GPU (the run finishes, run.json records resumed_from);
#   4. a 2-process DDP run over NCCL (needs 2 GPUs; with one GPU it runs the 2 processes over gloo on the CPU
#      and says so, since NCCL refuses two ranks on one device);
#   5. export + bench (torch on CUDA, ONNX Runtime) of the GPU-trained run.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (from the repository root, with sr-shrink installed)
# Prints one PASS/FAIL line per check and exits non-zero on the first failure. Nothing is downloaded.
set -euo pipefail
OUT=${1:-runs/gpu_check}
rm -rf "$OUT"; mkdir -p "$OUT"
log() { printf '%s %s\n' "$1" "$2"; }
fail() { log FAIL "$1"; exit 1; }

python - <<'PY' || fail "CUDA visible to torch"
import torch, sys
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "devices", torch.cuda.device_count(),
      torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
from sr_shrink.distill.sources import resolve_teacher_dtype
print("--teacher-dtype auto ->", resolve_teacher_dtype("auto", torch.device("cuda")))
from sr_shrink.teachers import default_teacher, load_teacher
t = load_teacher(str(default_teacher(2))).cuda()
x = torch.rand(16, 3, 24, 24, device="cuda")
with torch.no_grad():
    ref = t(x).float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = t(x).float()
mse = float(((ref - low) ** 2).mean())
print(f"bf16 vs fp32 teacher output: PSNR {10 * __import__('math').log10(1 / max(mse, 1e-20)):.1f} dB")
PY
log PASS "CUDA visible, bf16 teacher forward"

for S in 2 4; do
  sr-shrink distill --scale $S --device cuda --amp --stages 1:2 --steps-per-stage 200 --out "$OUT/x$S" --quiet \
    || fail "distill x$S on CUDA with --amp"
  python - "$OUT/x$S/run.json" <<'PY' || fail "distill x$S run.json"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["complete"] and r["teacher_dtype"] in ("bf16", "fp32"), r.get("teacher_dtype")
s = r["stages"][-1]
print(f"x{r['scale']}: teacher dtype {r['teacher_dtype']}, stage {s['stage']} Y-PSNR {s['val_psnr_y']:.2f} "
      f"(bicubic {r['bicubic_psnr_y']:.2f}), fidelity {s['fidelity_psnr_y']:.2f}, {s['seconds']:.0f} s, "
      f"timing {r['timing_seconds']}")
assert s["val_psnr_y"] > r["bicubic_psnr_y"], "the student does not beat bicubic"
PY
  log PASS "distill x$S on CUDA (--amp, teacher dtype auto)"
done

sr-shrink distill --device cuda --stages 1:2 --steps-per-stage 400 --save-every 20 --out "$OUT/kill" --quiet &
PID=$!
for _ in $(seq 1 600); do [ -f "$OUT/kill/state.pt" ] && break; sleep 0.2; done
kill -9 $PID 2>/dev/null || true; wait $PID 2>/dev/null || true
[ -f "$OUT/kill/state.pt" ] || fail "kill/resume: no state.pt was written before the kill"
sr-shrink distill --device cuda --stages 1:2 --steps-per-stage 400 --save-every 20 --out "$OUT/kill" --resume --quiet \
  || fail "resume on CUDA"
python -c "import json,sys; r=json.load(open('$OUT/kill/run.json')); assert r['complete'] and r.get('resumed_from'), r.get('resumed_from'); print('resumed_from', r['resumed_from'])" \
  || fail "resume on CUDA: run.json"
log PASS "kill + --resume on CUDA"

NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -ge 2 ]; then
  python -m torch.distributed.run --nproc_per_node 2 -m sr_shrink.cli distill --device cuda --stages 1:2 \
    --steps-per-stage 100 --out "$OUT/ddp" --quiet || fail "2-process DDP over NCCL"
  WHAT="2-process DDP over NCCL ($NGPU GPUs)"
else
  python -m torch.distributed.run --nproc_per_node 2 -m sr_shrink.cli distill --device cpu --stages 1:2 \
    --steps-per-stage 30 --out "$OUT/ddp" --quiet || fail "2-process DDP over gloo"
  WHAT="2-process DDP over gloo on the CPU (one GPU: NCCL needs one device per rank, not checked)"
fi
python -c "import json; r=json.load(open('$OUT/ddp/run.json')); assert r['complete'] and r['world_size']==2" \
  || fail "DDP run.json"
log PASS "$WHAT"

sr-shrink export "$OUT/x2" --target onnx --precision int8 || fail "export of the CUDA-trained run"
sr-shrink bench "$OUT/x2" --device cuda --runtimes torch,onnxruntime --precisions fp32,int8 --max-images 3 \
  --repeats 5 || fail "bench of the CUDA-trained run"
log PASS "export + bench of the CUDA-trained run"
echo "all GPU checks passed; results in $OUT"
