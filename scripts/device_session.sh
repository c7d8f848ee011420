#!/usr/bin/env bash
# What a lent GPU session runs (one call): the CUDA-path benchmark, then training-recipe variants of
# the embedded text models in parallel, each scored on held-out problems. Results land in $OUT.
# Usage (on the device): OUT=/some/dir bash scripts/device_session.sh
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
W=/tmp/recipes; mkdir -p "$W" "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
common="--only teacher --only student --device cuda --teacher-steps 0"
declare -A V=(
  [v1_tied]="--teacher-tied-steps 4800 --decoding-frac 0.0 --student-steps 1500"
  [v2_dec50]="--teacher-tied-steps 4800 --decoding-frac 0.5 --student-steps 1500"
  [v3_dec80]="--teacher-tied-steps 4800 --decoding-frac 0.8 --student-steps 1500"
  [v4_dec100]="--teacher-tied-steps 4800 --decoding-frac 1.0 --student-steps 1500"
  [v5_lr2e3]="--teacher-tied-steps 4800 --decoding-frac 0.5 --teacher-lr 0.002 --student-steps 1500"
  [v6_stud3k]="--teacher-tied-steps 4800 --decoding-frac 0.5 --student-steps 3000"
  [v7_long]="--teacher-tied-steps 12000 --decoding-frac 0.5 --student-steps 3000"
  [v8_h192]="--teacher-tied-steps 4800 --decoding-frac 0.5 --student-steps 1500 --hidden 192"
)
# The CUDA-path benchmark first, alone on the GPU, so its timings are not shared with training.
[ -n "${SKIP_CUDA:-}" ] || timeout "${CUDA_LIMIT:-100}" python3 -m models.bench cuda --json > "$OUT/cuda.json" 2> "$OUT/cuda.err"
for name in ${ONLY:-${!V[@]}}; do
  ( mkdir -p "$W/$name"
    timeout "${TRAIN_LIMIT:-300}" python3 -m models.training --out "$W/$name" $common ${V[$name]} > "$W/$name/train.log" 2>&1
    echo "train rc=$?" >> "$W/$name/train.log"
    timeout "${BENCH_LIMIT:-100}" python3 -m models.bench text --checkpoints "$W/$name" --methods vanilla,fast-dllm,d2f \
      --problems 60 --device cuda --json > "$W/$name/bench.json" 2>> "$W/$name/train.log" ) &
done
wait
python3 - "$W" "$OUT" <<'PY'
import json, sys, pathlib, tarfile
w, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
res = {}
for d in sorted(w.iterdir()):
    log = (d / "train.log").read_text() if (d / "train.log").exists() else ""
    tail = [l for l in log.splitlines() if "step" in l][-4:] + log.splitlines()[-3:]
    try:
        rows = {r["method"]: r for r in json.loads((d / "bench.json").read_text())["rows"]}
    except Exception as e:
        rows = {"error": repr(e)}
    res[d.name] = {"rows": rows, "log_tail": tail}
(out / "recipes.json").write_text(json.dumps(res, indent=1))
def key(n):
    r = res[n]["rows"]
    return (r.get("d2f", {}).get("score", -1), r.get("vanilla", {}).get("score", -1))
best = sorted(res, key=key, reverse=True)[:3]
for n in best:
    with tarfile.open(out / f"{n}.tar.gz", "w:gz") as t:
        t.add(w / n, arcname=n)
print(json.dumps({n: {m: (r.get("score"), r.get("tokens_per_forward")) for m, r in res[n]["rows"].items() if isinstance(r, dict)} for n in res}, indent=1))
print("best:", best)
PY
