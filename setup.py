"""The router's per-token relay in C (cluster/router/_pump.c); everything else is in pyproject.toml.

``optional``: where no C compiler is found the install goes on and the router relays in Python
(cluster/router/pump.py says so at startup)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cluster.router._pump", ["cluster/router/_pump.c"], optional=True, extra_compile_args=["-O2"])])
