"""The router's three C parts; everything else is in pyproject.toml.

- ``cluster.router._pump``: the per-token relay (cluster/router/_pump.c, the Pump and the module; _pump_wire.c, the
  OpenAIChunk fields off the wire; _pump_frames.c, the FrameProtocol; _pump.h, what crosses them).
- ``cluster.common._prefix_keys``: the prompt prefix keys of prefix-aware routing (cluster/common/_prefix_keys.c).
- ``cluster.router._http_head``: an ordinary request head of the fast HTTP front (cluster/router/_http_head.c).

``optional``: where no C compiler is found the install goes on and the router runs their Python twins
(cluster/router/pump.py says so at startup; cluster/common/prefix_hash.py and cluster/router/http_fast.py fall back
silently)."""

from setuptools import Extension, setup

_FLAGS = ["-O2"]
setup(
    ext_modules=[
        Extension(
            "cluster.router._pump",
            ["cluster/router/_pump.c", "cluster/router/_pump_wire.c", "cluster/router/_pump_frames.c"],
            depends=["cluster/router/_pump.h"],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension("cluster.common._prefix_keys", ["cluster/common/_prefix_keys.c"], optional=True, extra_compile_args=_FLAGS),
        Extension("cluster.router._http_head", ["cluster/router/_http_head.c"], optional=True, extra_compile_args=_FLAGS),
    ]
)
