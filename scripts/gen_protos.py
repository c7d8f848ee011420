"""Generate the Python gRPC stubs into the SDK package: `python scripts/gen_protos.py [--check]`.

Stubs land at sdk/tessera/<proto package path> (tessera/v1, tessera/worker/v1), so the import
paths protoc writes (`from tessera.v1 import text_pb2`) are the SDK package's own.
--check regenerates into a temporary directory and fails if the checked-in stubs differ.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "sdk"
GENERATED_DIRS = ("tessera/v1", "tessera/worker/v1")


def _googleapis_include() -> str:
    import google.rpc.status_pb2 as status  # googleapis-common-protos ships the .proto sources

    return str(Path(status.__file__).resolve().parents[2])


def generate(out: Path) -> None:
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = ["protoc", f"-I{PROTOS}", f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
            f"-I{_googleapis_include()}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for d in GENERATED_DIRS:
        for pkg in (out / d, *[p for p in (out / d).parents if p != out and out in p.parents]):
            init = pkg / "__init__.py"
            if not init.exists() and pkg.name != "tessera":
                init.write_text("")


def _generated_files(base: Path) -> set[str]:
    return {str(p.relative_to(base)) for d in GENERATED_DIRS for p in (base / d).glob("*")
            if p.is_file() and p.suffix in (".py", ".pyi")}


def main() -> int:
    if "--check" not in sys.argv:
        for d in GENERATED_DIRS:
            shutil.rmtree(OUT / d, ignore_errors=True)
        generate(OUT)
        print(f"generated {len(_generated_files(OUT))} files under {OUT}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        want, have = _generated_files(Path(tmp)), _generated_files(OUT)
        stale = sorted(want ^ have) + sorted(
            f for f in want & have if not filecmp.cmp(Path(tmp) / f, OUT / f, shallow=False))
    if stale:
        print("stale generated stubs (run `make protos`):", *stale, sep="\n  ")
        return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
