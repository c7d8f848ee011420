"""The checked-in gRPC stubs must match protos/ (regenerate with `make protos`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_up_to_date() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stale_check_detects_a_changed_proto(tmp_path: Path) -> None:
    """Mutate a copy of the tree: the same check must then fail."""
    import shutil

    for d in ("protos", "sdk/tessera", "scripts"):
        shutil.copytree(ROOT / d, tmp_path / d)
    proto = tmp_path / "protos/tessera/v1/common.proto"
    proto.write_text(proto.read_text().replace("FINISH_REASON_CANCELLED = 3;", "FINISH_REASON_CANCELLED = 3;\n"
                                                "  // A new reason.\n  FINISH_REASON_ERROR = 4;"))
    out = subprocess.run([sys.executable, str(tmp_path / "scripts" / "gen_protos.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "common_pb2" in out.stdout
