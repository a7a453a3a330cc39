"""Generated gRPC stubs for ``framecast.v1`` (``proto/framecast.proto``).

Do not edit the ``framecast_pb2*`` files: regenerate them with ``scripts/gen_proto.py``.
"""
