"""The committed stubs in framecast/_proto are what scripts/gen_proto.py makes from
proto/framecast.proto (with the pinned grpcio-tools)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def load_gen_proto():  # type: ignore[no-untyped-def]
    path = PACKAGE_ROOT / "scripts" / "gen_proto.py"
    spec = importlib.util.spec_from_file_location("gen_proto", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_regenerated(tmp_path: Path) -> None:
    gen = load_gen_proto()
    written = gen.generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(gen.GENERATED)
    committed = PACKAGE_ROOT / "framecast" / "_proto"
    stale = [
        name
        for name in gen.GENERATED
        if (tmp_path / name).read_bytes() != (committed / name).read_bytes()
    ]
    assert not stale, (
        f"stubs out of date: {stale}; run `python clients/python/scripts/gen_proto.py` "
        "(with the grpcio-tools version pinned in pyproject.toml) and commit the result"
    )


def test_generated_grpc_module_imports_relatively() -> None:
    text = (PACKAGE_ROOT / "framecast" / "_proto" / "framecast_pb2_grpc.py").read_text()
    assert "from . import framecast_pb2 as framecast__pb2" in text
    assert "\nimport framecast_pb2" not in text
    from framecast._proto import framecast_pb2_grpc

    assert hasattr(framecast_pb2_grpc, "BroadcastStub")
