import pytest

from cluster.router.auth import AuthError, KeyStore, Tenant, TenantSpec, bearer, digest, new_key, parse_key_file
from cluster.router.limits import Limiter, LimitExceeded


def key_file(tmp_path, keys: dict[str, str], tenants: str = "") -> str:
    lines = ["tenants:"]
    lines += [tenants] if tenants else ["  a: {requests_per_minute: 60}", "  b: {}"]
    lines += ["keys:"] + [f"  - {{sha256: '{digest(k)}', tenant: {t}}}" for k, t in keys.items()]
    p = tmp_path / "keys.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_a_key_maps_to_its_tenant_and_only_its_digest_is_stored(tmp_path):
    k = new_key()
    p = key_file(tmp_path, {k: "a"})
    assert k not in p.read_text()
    store = KeyStore(p)
    assert store.authenticate(k).name == "a"
    assert store.authenticate(k).spec.requests_per_minute == 60


@pytest.mark.parametrize("presented", [None, "", "wrong-key"])
def test_missing_or_unknown_keys_are_refused(tmp_path, presented):
    store = KeyStore(key_file(tmp_path, {new_key(): "a"}))
    with pytest.raises(AuthError):
        store.authenticate(presented)


def test_a_changed_file_is_picked_up_without_restart_and_a_broken_one_is_ignored(tmp_path):
    k1, k2 = new_key(), new_key()
    p = key_file(tmp_path, {k1: "a"})
    store = KeyStore(p)
    key_file(tmp_path, {k2: "b"})
    assert store.reload() is True
    assert store.authenticate(k2).name == "b"
    with pytest.raises(AuthError):
        store.authenticate(k1)
    p.write_text("keys: [ {sha256: nothex, tenant: b} ]\n")
    assert store.reload() is False  # invalid: keep the previous keys
    assert store.authenticate(k2).name == "b"


def test_key_file_errors_name_the_field():
    with pytest.raises(ValueError, match=r"keys.0.tenant.*unknown tenant 'zz'"):
        parse_key_file(f"tenants: {{a: {{}}}}\nkeys: [{{sha256: '{'0' * 64}', tenant: zz}}]\n")
    with pytest.raises(ValueError, match=r"keys.0.sha256.*quoted"):
        parse_key_file(f"tenants: {{a: {{}}}}\nkeys: [{{sha256: {'1' * 64}, tenant: a}}]\n")
    with pytest.raises(ValueError, match=r"tenants.a.priority"):
        parse_key_file("tenants: {a: {priority: urgent}}\n")


def test_bearer_parsing():
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer(None) is None and bearer("Bearer ") is None


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def tenant(**spec) -> Tenant:
    return Tenant("t", TenantSpec(**spec))


def test_requests_per_minute_allows_a_minute_of_burst_then_refuses_with_retry_after():
    clock = Clock()
    lim = Limiter(clock)
    t = tenant(requests_per_minute=60)
    for _ in range(60):
        lim.release(lim.acquire(t, 1))
    with pytest.raises(LimitExceeded) as err:
        lim.acquire(t, 1)
    assert err.value.retry_after_s == 1 and "60 requests per minute" in str(err.value)
    clock.t += 1.0
    lim.acquire(t, 1)  # one second refills one request


def test_tokens_are_reconciled_with_real_usage_when_the_request_ends():
    clock = Clock()
    lim = Limiter(clock)
    t = tenant(tokens_per_minute=1000)
    g = lim.acquire(t, 900)
    lim.release(g, used_tokens=100)  # stopped early: 800 come back
    lim.acquire(t, 900)
    with pytest.raises(LimitExceeded, match="tokens per minute") as err:
        lim.acquire(t, 900)
    assert err.value.retry_after_s >= 1


def test_max_concurrent_counts_in_flight_requests():
    lim = Limiter(Clock())
    t = tenant(max_concurrent=2)
    a, _ = lim.acquire(t, 1), lim.acquire(t, 1)
    with pytest.raises(LimitExceeded, match="2 concurrent"):
        lim.acquire(t, 1)
    lim.release(a)
    lim.release(a)  # releasing twice is harmless
    lim.acquire(t, 1)
    assert lim.in_flight("t") == 2


def test_an_unlimited_tenant_is_never_refused():
    lim = Limiter(Clock())
    t = tenant()
    grants = [lim.acquire(t, 10_000) for _ in range(10_000)]  # LimitExceeded would fail the test
    assert lim.in_flight("t") == 10_000
    assert lim.refused() == {}
    for g in grants:
        lim.release(g)
    assert lim.in_flight("t") == 0


def test_keys_new_prints_a_key_that_the_file_it_updates_accepts(tmp_path, capsys):
    from cluster.cli import main

    p = tmp_path / "keys.yaml"
    p.write_text("tenants:\n  search: {requests_per_minute: 10}\nkeys: []\n")
    assert main(["keys", "new", "--tenant", "search", "--file", str(p)]) == 0
    assert main(["keys", "new", "--tenant", "batch-jobs", "--file", str(p)]) == 0
    out = capsys.readouterr().out.splitlines()
    key1, line1, key2 = out[0], out[1], out[2]
    assert key1.startswith("llmc-") and digest(key1) in line1 and "tenant: search" in line1
    store = KeyStore(p)
    assert store.authenticate(key1).spec.requests_per_minute == 10
    assert store.authenticate(key2).name == "batch-jobs"
    assert key1 not in p.read_text()


def test_keys_new_has_help():
    from cluster.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["keys", "new", "--help"])
    assert exc.value.code == 0
