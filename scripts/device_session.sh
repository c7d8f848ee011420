#!/usr/bin/env bash
# What a lent GPU session runs (one call, ~8 minutes): text-recipe variants of the embedded D2F
# models, each scored on held-out problems, and the image models' training recipe, in parallel on
# one GPU. Checkpoints and logs land in $OUT.
# Usage (on the device): OUT=/some/dir bash scripts/device_session.sh
# Knobs: ONLY="a b" (text variants), TEXT_EXTRA / IMAGE_EXTRA (flags appended, e.g. step counts for
# a smoke run), NO_IMAGE=1, CUDA=1 (run the CUDA-path benchmark first, alone), TRAIN_LIMIT,
# BENCH_LIMIT, IMAGE_LIMIT (seconds, hard), TRAIN_SOFT, IMAGE_SOFT (seconds from the start after
# which training phases stop early and save: TESSERA_TRAIN_UNTIL). Lesson from an earlier session:
# 8 processes at once ran at 65 ms/step each; keep it to about 4 training processes on one GPU.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
PY=${PY:-python3}
DEV=${DEV:-cuda}
W=${W:-/tmp/recipes}; mkdir -p "$W" "$OUT"
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())" >> "$OUT/gpu.txt" 2>&1
# Each variant must fit the 1-hour CPU budget of `python -m lab.training` (idle 2-core CPU:
# AR 0.40 s/step, teacher 0.44, polish 0.45, student 0.55).
declare -A V=(
  [dream_t4k]="--teacher-layout dream --teacher-tied-steps 4000 --student-steps 2500"
  [dream_t4800]="--teacher-layout dream --teacher-tied-steps 4800 --student-steps 2000 --ar-steps 800"
)
[ -z "${CUDA:-}" ] || timeout "${CUDA_LIMIT:-100}" "$PY" -m lab.bench cuda --json > "$OUT/cuda.json" 2> "$OUT/cuda.err"
for name in ${ONLY:-${!V[@]}}; do
  ( mkdir -p "$W/$name"
    TESSERA_TRAIN_UNTIL=$((T0 + ${TRAIN_SOFT:-380})) timeout "${TRAIN_LIMIT:-420}" "$PY" -m lab.training --out "$W/$name" --device "$DEV" ${V[$name]} ${TEXT_EXTRA:-} > "$W/$name/train.log" 2>&1
    echo "train rc=$?" >> "$W/$name/train.log"
    timeout "${BENCH_LIMIT:-90}" "$PY" -m lab.bench text --checkpoints "$W/$name" --problems 60 --device "$DEV" --json \
      > "$W/$name/bench.json" 2>> "$W/$name/train.log"
    cp "$W/$name/train.log" "$OUT/text-$name.log"
    tar -czf "$OUT/text-$name.tar.gz" -C "$W" "$name" ) &
done
if [ -z "${NO_IMAGE:-}" ]; then
  ( I="$W/images"; mkdir -p "$I"
    img() { TESSERA_TRAIN_UNTIL=$((T0 + ${IMAGE_SOFT:-440})) timeout "${IMAGE_LIMIT:-480}" "$PY" -m lab.training.images --out "$I" --device "$DEV" --threads 2 "$@" ${IMAGE_EXTRA:-}; }
    img --only vae > "$I/vae.log" 2>&1
    img --only orthus > "$I/orthus.log" 2>&1 &
    img --only nextstep > "$I/nextstep.log" 2>&1 &
    wait
    cp "$I"/*.log "$OUT/"
    tar -czf "$OUT/images.tar.gz" -C "$I" . ) &
fi
wait
"$PY" - "$W" "$OUT" <<'PY'
import json, sys, pathlib
w, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
res = {}
for d in sorted(p for p in w.iterdir() if (p / "train.log").exists()):
    log = (d / "train.log").read_text()
    tail = [l for l in log.splitlines() if "step" in l][-6:] + log.splitlines()[-3:]
    try:
        rows = {r["method"]: r for r in json.loads((d / "bench.json").read_text())["rows"]}
    except Exception as e:
        rows = {"error": repr(e)}
    res[d.name] = {"rows": rows, "log_tail": tail}
(out / "recipes.json").write_text(json.dumps(res, indent=1))
print(json.dumps({n: {m: (r.get("score"), r.get("tokens_per_forward"), r.get("tps")) for m, r in res[n]["rows"].items()
                      if isinstance(r, dict)} for n in res}, indent=1))
PY
tail -n 3 "$OUT"/*.log
