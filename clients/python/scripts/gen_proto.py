#!/usr/bin/env python3
"""Regenerates the gRPC stubs in ``framecast/_proto/`` from ``proto/framecast.proto``.

Usage (from anywhere)::

    python clients/python/scripts/gen_proto.py            # rewrite the committed stubs
    python clients/python/scripts/gen_proto.py --out DIR  # write them to DIR instead

It runs ``grpc_tools.protoc`` (install it with ``pip install './clients/python[test]'``,
which pins the version the committed stubs were made with) on ``../../proto/framecast.proto``
relative to ``clients/python``, emitting ``framecast_pb2.py``, ``framecast_pb2.pyi`` and
``framecast_pb2_grpc.py``, then turns the generated ``import framecast_pb2`` into a relative
import so the stubs work inside the ``framecast._proto`` package.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

#: ``clients/python``.
PACKAGE_ROOT: Path = Path(__file__).resolve().parent.parent
#: The directory holding ``framecast.proto`` (the repository's ``proto/``).
PROTO_DIR: Path = (PACKAGE_ROOT / ".." / ".." / "proto").resolve()
#: The proto file the stubs are made from.
PROTO_FILE: str = "framecast.proto"
#: Where the committed stubs live.
DEFAULT_OUT: Path = PACKAGE_ROOT / "framecast" / "_proto"
#: The files this script writes.
GENERATED: tuple[str, ...] = ("framecast_pb2.py", "framecast_pb2.pyi", "framecast_pb2_grpc.py")


def fix_imports(source: str) -> str:
    """Turns ``import framecast_pb2 as x`` into ``from . import framecast_pb2 as x``."""
    return re.sub(
        r"^import framecast_pb2 as (\w+)$",
        r"from . import framecast_pb2 as \1",
        source,
        flags=re.MULTILINE,
    )


def generate(out: Path) -> list[Path]:
    """Generates the stubs into ``out`` (created if missing); returns the files written."""
    import grpc_tools
    from grpc_tools import protoc  # imported here: only this script needs grpcio-tools

    out.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO_DIR / PROTO_FILE),
        ]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(args)}")
        written = []
        for name in GENERATED:
            text = (Path(tmp) / name).read_text(encoding="utf-8")
            if name.endswith("_grpc.py"):
                text = fix_imports(text)
            target = out / name
            target.write_text(text, encoding="utf-8")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT})",
    )
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
