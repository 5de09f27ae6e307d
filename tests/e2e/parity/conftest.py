"""One ``vllm serve`` and one cluster for every parity test of this run (package scope: both are stopped when the
last parity test is done, before other e2e modules start their own Ray)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .compare import Pair
from .servers import parity_servers


@pytest.fixture(scope="package")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with parity_servers(tmp_path_factory.mktemp("parity")) as (ref, cluster):
        with Pair(ref.url, cluster.url) as p:
            yield p
