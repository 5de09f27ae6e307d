"""Schemathesis against the running router's own OpenAPI schema: generated requests never get a 5xx.

The router (auth on, sim replicas over real gRPC) serves on the test's event
loop; schemathesis runs in a worker thread with plain blocking HTTP.  Both
valid (positive) and schema-violating (negative) bodies are generated for the
two inference operations, plus the GET operations.
"""

from __future__ import annotations

import asyncio
import collections
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from cluster.router.auth import digest, new_key

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

#: Generated cases per (operation, mode); 2 x (170 + 110) = 560 for the POSTs alone.
EXAMPLES = {GenerationMode.POSITIVE: 170, GenerationMode.NEGATIVE: 110}


def fuzz(base_url: str, key: str) -> tuple[collections.Counter, list[str]]:
    raw = requests.get(f"{base_url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(raw)
    statuses: collections.Counter = collections.Counter()
    failures: list[str] = []
    session = requests.Session()
    headers = {"Authorization": f"Bearer {key}"}

    def runner(op: schemathesis.APIOperation, mode: GenerationMode, n: int) -> None:
        label = f"{op.label} {mode.value}"

        @settings(
            max_examples=n,
            deadline=None,
            phases=[Phase.generate],
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
            statuses[(label, response.status_code)] += 1
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except Exception as exc:  # collect every failure, not just the first
                failures.append(f"{label}: {response.status_code} {str(exc)[:300]}")

        run()

    for result in schema.get_all_operations():
        op = result.ok()
        post = op.method.upper() == "POST"
        for mode, n in EXAMPLES.items():
            if post or mode is GenerationMode.POSITIVE:
                runner(op, mode, n if post else 5)
    return statuses, failures


async def test_generated_requests_never_get_a_server_error(sim_fleet, tmp_path):
    key = new_key()
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"tenants: {{fuzz: {{}}}}\nkeys: [{{sha256: '{digest(key)}', tenant: fuzz}}]\n")
    router = await sim_fleet.start(
        2,
        router={"auth": {"enabled": True, "key_file": str(keys)}, "request_timeout_s": 20, "default_max_tokens": 16},
        time_scale=0.002,
        max_model_len=128,
    )
    t0 = time.monotonic()
    statuses, failures = await asyncio.to_thread(fuzz, f"http://127.0.0.1:{router.http_port}", key)
    elapsed = time.monotonic() - t0
    total = sum(statuses.values())
    by_status = collections.Counter()
    for (_, status), n in statuses.items():
        by_status[status] += n
    print(f"\nschemathesis: {total} cases in {elapsed:.1f} s, by status {dict(sorted(by_status.items()))}")
    assert total >= 500
    assert not failures, "\n".join(failures[:20])
    assert all(s < 500 for s in by_status)
    # The fuzzing exercised both outcomes: answers and clear refusals.
    assert by_status[200] > 50 and by_status[400] > 50
    assert router.gate.leaks() == {}
