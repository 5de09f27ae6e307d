"""What :mod:`loadtests.bench.router_overhead` prints: the figures of its runs, summed and round by round.

The summed table is each system's CPU per stream, per token and per request over all rounds.  The round-by-round
table is what says whether a difference between two systems is real: every round runs each system once, one after
the other, so a ratio taken inside one round compares runs a few seconds apart, on the same machine state; the
spread of those ratios over the rounds (min / median / max) is the measurement's own noise, which a figure summed
over rounds hides.  Ratios are against ``vllm-router`` when it ran (the issue's reference), else against ``direct``.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field

#: The two stream lengths of every system's runs; the per-token and per-request figures are their fit.
LENGTHS = (16, 256)
#: What a ratio is taken against, first one present.
REFERENCES = ("vllm-router", "direct")


@dataclass
class Run:
    requests: int = 0
    tokens: int = 0
    cpu_s: float = 0.0
    #: The part of ``cpu_s`` spent in the kernel (system time: the sockets' reads and writes, mostly).
    sys_s: float = 0.0
    wall_s: float = 0.0
    ttft: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, other: Run) -> None:
        """Fold ``other`` (one round's run) into this sum."""
        self.requests += other.requests
        self.tokens += other.tokens
        self.cpu_s += other.cpu_s
        self.sys_s += other.sys_s
        self.wall_s += other.wall_s
        self.ttft += other.ttft
        self.errors += other.errors


Runs = dict[tuple[str, int], Run]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] * 1000


def report(
    systems: list[str], runs: Runs, rounds: list[Runs], notes: dict[str, str], args: argparse.Namespace, idle: dict[str, float]
) -> dict:
    """Print the summed table, its user/system split and the round-by-round ratios; return the figures."""
    short, long_ = LENGTHS
    hdr = (
        f"{'system':<16} {'CPU/16-tok':>11} {'CPU/256-tok':>12} {'CPU/token':>10} {'CPU/request':>12} {'req/s':>7} "
        f"{'TTFT p50':>9} {'p99':>8} {'added p50':>10} {'p99':>8} {'tok/req':>8} {'err':>4}"
    )
    print(
        f"{args.replicas} null backends ({args.token_interval_ms:g} ms between tokens), {args.streams} concurrent streams, "
        f"{args.duration:g} s per run, {args.rounds} rounds\n"
    )
    print(hdr + "\n" + "-" * len(hdr))
    out: dict = {}
    d = runs.get(("direct", short))
    for s in systems:
        if s in notes:
            print(f"{s:<16} {notes[s]}")
            continue
        a, b = runs[(s, short)], runs[(s, long_)]
        per16, per256 = per_request(a, "cpu_s"), per_request(b, "cpu_s")
        per_tok, per_req = slope(a, b, "cpu_s")
        add50 = pct(a.ttft, 50) - pct(d.ttft, 50) if d else float("nan")
        add99 = pct(a.ttft, 99) - pct(d.ttft, 99) if d else float("nan")
        print(
            f"{s:<16} {us(per16):>11} {us(per256):>12} {us(per_tok):>10} {us(per_req):>12} "
            f"{a.requests / a.wall_s if a.wall_s else 0:7.0f} {pct(a.ttft, 50):7.2f}ms {pct(a.ttft, 99):6.2f}ms "
            f"{add50:8.2f}ms {add99:6.2f}ms {b.tokens / max(b.requests, 1):8.0f} {a.errors + b.errors:4d}"
        )
        out[s] = {
            "cpu_us_per_16_token_stream": per16,
            "cpu_us_per_256_token_stream": per256,
            "cpu_us_per_token": per_tok,
            "cpu_us_per_request": per_req,
            "req_s": a.requests / a.wall_s if a.wall_s else 0.0,
            "ttft_p50_ms": pct(a.ttft, 50),
            "ttft_p99_ms": pct(a.ttft, 99),
            "added_ttft_p50_ms": add50,
            "added_ttft_p99_ms": add99,
            "errors": a.errors + b.errors,
        }
    split(systems, runs, notes, out, idle)
    print("\nCPU: the router's process tree (/proc/PID/stat); per token = slope 16 -> 256 tokens; per request = the rest")
    print("direct's CPU is the null backends' own: aiohttp writing pre-encoded SSE from memory (Python's HTTP alone)")
    ran = [s for s in systems if s not in notes]
    out["ratios_by_round"] = by_round(ran, rounds)
    return out


def split(systems: list[str], runs: Runs, notes: dict[str, str], out: dict, idle: dict[str, float]) -> None:
    """The same CPU figures cut into user time (the process's own code: for ours, mostly the interpreter) and system
    time (the kernel's, for the sockets): what a faster interpreter path could cut, and what every router pays;
    and the CPU each spends idle (ms a second), which the per-request figure includes at the 16-token runs' rate."""
    short, long_ = LENGTHS
    hdr = f"\n{'system':<16} {'user/token':>11} {'sys/token':>10} {'user/request':>13} {'sys/request':>12} {'idle CPU':>10}"
    print(hdr + "\n" + "-" * (len(hdr) - 1))
    for s in systems:
        if s in notes:
            continue
        tok, req = out[s]["cpu_us_per_token"], out[s]["cpu_us_per_request"]  # report()'s, cut in two here
        sys_tok, sys_req = slope(runs[(s, short)], runs[(s, long_)], "sys_s")
        idle_ms = idle.get(s, float("nan"))
        print(f"{s:<16} {us(tok - sys_tok):>11} {us(sys_tok):>10} {us(req - sys_req):>13} {us(sys_req):>12} {idle_ms:6.1f} ms/s")
        out[s] |= {"sys_us_per_token": sys_tok, "sys_us_per_request": sys_req, "idle_cpu_ms_per_s": idle_ms}


def figures(a: Run, b: Run) -> dict[str, float]:
    """CPU µs per 16-token stream, per 256-token stream, per token and per request, of a 16- and a 256-token run."""
    per_tok, per_req = slope(a, b, "cpu_s")
    return {"16-tok": per_request(a, "cpu_s"), "256-tok": per_request(b, "cpu_s"), "token": per_tok, "request": per_req}


def by_round(systems: list[str], rounds: list[Runs]) -> dict[str, dict[str, list[float]]]:
    """Each system's ratio to the reference, figure by figure, in every round; printed as min / median / max."""
    ref = next((r for r in REFERENCES if r in systems), None)
    if ref is None or len(rounds) < 2:
        return {}
    short, long_ = LENGTHS
    ratios: dict[str, dict[str, list[float]]] = {}
    for s in systems:
        if s == ref:
            continue
        ratios[s] = {}
        for rnd in rounds:
            mine, theirs = figures(rnd[(s, short)], rnd[(s, long_)]), figures(rnd[(ref, short)], rnd[(ref, long_)])
            for k, v in mine.items():
                ratios[s].setdefault(k, []).append(v / theirs[k] if theirs[k] > 0 else float("nan"))
    hdr = f"\n{'ratio to ' + ref:<24} " + " ".join(f"{'per ' + k:>20}" for k in ("16-tok", "256-tok", "token", "request"))
    print(hdr + "\n" + "-" * (len(hdr) - 1))
    for s, by in ratios.items():
        print(f"{s:<24} " + " ".join(f"{spread(by[k]):>20}" for k in ("16-tok", "256-tok", "token", "request")))
    print(f"each round's ratio, side by side in that round: min / median / max over {len(rounds)} rounds (below 1: less CPU)")
    return ratios


def spread(xs: list[float]) -> str:
    ok = [x for x in xs if x == x]
    if not ok:
        return "-"
    return f"{min(ok):.2f} / {statistics.median(ok):.2f} / {max(ok):.2f}"


def slope(a: Run, b: Run, seconds: str) -> tuple[float, float]:
    """(per token, per request) of the ``seconds`` field (cpu_s or sys_s) of a 16- and a 256-token run."""
    short, long_ = LENGTHS
    per16, per256 = per_request(a, seconds), per_request(b, seconds)
    per_tok = (per256 - per16) / (long_ - short)
    return per_tok, per16 - short * per_tok


def per_request(run: Run, seconds: str) -> float:
    """µs of ``seconds`` (cpu_s or sys_s) per request of ``run``."""
    return getattr(run, seconds) / run.requests * 1e6 if run.requests else float("nan")


def us(v: float) -> str:
    return f"{v:,.0f} us" if v == v else "-"
