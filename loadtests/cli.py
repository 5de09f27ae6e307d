"""Command line: ``python -m loadtests {run,schedule,plot} ...`` (each with ``--help``).

- ``run``: drive a target and report (table on stdout; ``--out DIR`` for result.json, requests.jsonl, plots).
- ``schedule``: compute the seeded schedule a ``run`` with the same options would send, without sending it;
  print its shape and optionally write it as a trace (to inspect, edit, or replay elsewhere).
- ``plot``: redraw the plots of a finished run from its ``DIR/result.json`` and ``DIR/requests.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from loadtests.arrivals import ArrivalProcess, RateProfile, parse_profile
from loadtests.clients import make_client
from loadtests.lengths import parse_length
from loadtests.metrics import DEFAULT_PERCENTILES, parse_duration, parse_slo
from loadtests.runner import Runner, RunOptions, Schedule, build_schedule, cut_schedule
from loadtests.trace import read_trace, write_trace
from loadtests.workloads import (
    ListWorkload,
    SharedPrefixWorkload,
    ShareGPTWorkload,
    SyntheticWorkload,
    Workload,
    parse_group_popularity,
)

EXAMPLES = """examples:
  python -m loadtests run --target http://localhost:8000 --rate 5 --duration 60 --out out/poisson5
  python -m loadtests run --target http://localhost:8000 --workload shared-prefix --rate 5 --duration 20 --out out/sp
  python -m loadtests run --target grpc://localhost:50051 --arrival gamma --burstiness 0.5 --rate 10 --num-requests 500
  python -m loadtests run --target http://localhost:8000 --profile step:5@0,50@10,5@40 --duration 60 --out out/step
  python -m loadtests run --target http://localhost:8000 --concurrency 16 --num-requests 200 --input-len lognormal:256,0.6
  python -m loadtests run --target http://localhost:8000 --trace out/step/trace.jsonl --slo ttft=1s,tpot=50ms
"""


def _seconds(text: str) -> float:
    try:
        v = parse_duration(text, default_unit="s")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def _checked(parse: Any) -> Any:
    def inner(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    inner.__name__ = getattr(parse, "__name__", "value")
    return inner


def _add_load_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load (one of --rate, --profile, --concurrency, --trace)")
    g.add_argument("--rate", type=_positive_float, help="open loop: mean arrivals per second")
    g.add_argument(
        "--arrival", choices=["poisson", "gamma", "constant"], help="gaps between arrivals (default poisson; gamma with --burstiness)"
    )
    g.add_argument("--burstiness", type=_positive_float, help="gamma shape, as vllm bench serve: 1 = Poisson, <1 burstier, >1 smoother")
    g.add_argument(
        "--profile",
        type=_checked(lambda s: parse_profile(s) and s),  # checked now, kept as text for result.json
        help="open loop with a rate over time: step:5@0,50@10,5@40 | ramp:1@0,20@60 | square:LOW,HIGH,PERIOD_S[,DUTY]",
    )
    g.add_argument("--concurrency", type=_positive_int, help="closed loop: N workers, each sends when its last answer is done")
    g.add_argument("--trace", type=Path, help="replay a JSONL trace (times and requests); see loadtests/trace.py")
    g.add_argument("--trace-speed", type=_positive_float, default=1.0, help="replay the trace this many times faster (default 1)")
    g.add_argument("--duration", type=_seconds, help="stop sending after this long (e.g. 60, 90s, 5m)")
    g.add_argument("--num-requests", type=_positive_int, help="stop after this many requests")
    g.add_argument("--seed", type=int, default=0, help="seed of the arrival schedule and the workload (default 0)")

    w = p.add_argument_group("workload")
    w.add_argument(
        "--workload",
        choices=["synthetic", "shared-prefix", "sharegpt", "trace"],
        help="default synthetic (or what --sharegpt/--trace imply)",
    )
    w.add_argument(
        "--input-len",
        type=_checked(parse_length),
        help="prompt tokens (per turn for shared-prefix): N | uniform:LO,HI | lognormal:MEDIAN,SIGMA",
    )
    w.add_argument(
        "--output-len", type=_checked(parse_length), help="output tokens (max_tokens), same forms; default 128 (shared-prefix 64)"
    )
    w.add_argument("--sharegpt", type=Path, help="ShareGPT-format JSON file")
    w.add_argument("--groups", type=_positive_int, default=4, help="shared-prefix: groups, each with its own system prompt (default 4)")
    w.add_argument("--system-prompt-len", type=_positive_int, default=512, help="shared-prefix: system prompt tokens (default 512)")
    w.add_argument("--turns", type=_positive_int, default=3, help="shared-prefix: turns per session (default 3)")
    w.add_argument("--active-sessions", type=_positive_int, default=8, help="shared-prefix: sessions in progress at once (default 8)")
    w.add_argument(
        "--group-popularity",
        type=_checked(parse_group_popularity),
        default=0.0,
        metavar="uniform|zipf:S",
        help="shared-prefix: how new sessions pick a group: uniform (in turn, default) or zipf:S (group g with weight 1/(g+1)^S)",
    )


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="http://HOST:PORT (OpenAI API, SSE) or grpc://HOST:PORT (llm-cluster gRPC)")
    p.add_argument("--model", help="model name (default: the first the target lists)")
    p.add_argument("--api", choices=["chat", "completions"], default="chat", help="chat messages or a plain prompt (default chat)")
    p.add_argument(
        "--max-inflight", type=_positive_int, default=512, help="open loop: arrivals beyond this many outstanding are dropped (default 512)"
    )
    p.add_argument("--request-timeout", type=_seconds, default=300.0, help="per-request limit, counted as error 'timeout' (default 300s)")
    p.add_argument("--slo", type=_checked(parse_slo), help="goodput SLOs, e.g. ttft=1s,tpot=50ms,e2e=10s (bare numbers are ms)")
    p.add_argument(
        "--percentiles",
        type=_checked(lambda s: [float(x) for x in s.split(",")]),
        default=list(DEFAULT_PERCENTILES),
        help="percentiles to report (default 50,90,95,99)",
    )
    p.add_argument("--out", type=Path, help="write result.json, requests.jsonl and plots here")
    p.add_argument("--no-plots", action="store_true", help="with --out: skip the PNGs")
    p.add_argument("--record-trace", type=Path, help="write the run's schedule (times and full requests) as a JSONL trace")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--health-url", help="where to read ready_replicas (default: TARGET/healthz; gRPC: ListModels)")
    p.add_argument("--sample-interval", type=_seconds, default=0.5, help="in-flight sampling period (default 0.5s)")
    p.add_argument("--grpc-channels", type=_positive_int, default=1, help="gRPC: connections to spread streams over (default 1)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="extra HTTP header, repeatable")
    p.add_argument("--extra-body", type=_checked(json.loads), help="JSON object merged into every HTTP request body")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests",
        description="Open-loop load tests for llm-cluster (OpenAI HTTP or gRPC), with vllm bench serve's metrics.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run a load test against a target", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_run_args(run)
    _add_load_args(run)
    run.set_defaults(func=cmd_run)
    sch = sub.add_parser("schedule", help="compute the schedule a run would send (no target needed)")
    _add_load_args(sch)
    sch.add_argument("--output", "-o", type=Path, help="write it as a JSONL trace")
    sch.set_defaults(func=cmd_schedule)
    plot = sub.add_parser("plot", help="redraw the plots of a run from DIR/result.json and DIR/requests.jsonl")
    plot.add_argument("dir", type=Path)
    plot.set_defaults(func=cmd_plot)
    return parser


# ---------------------------------------------------------------------------


def make_workload(args: argparse.Namespace) -> Workload:
    kind = args.workload or ("sharegpt" if args.sharegpt else "trace" if args.trace else "synthetic")
    if kind == "sharegpt":
        if not args.sharegpt:
            raise ValueError("--workload sharegpt needs --sharegpt FILE")
        return ShareGPTWorkload(seed=args.seed, path=args.sharegpt, output_len=args.output_len)
    if kind == "shared-prefix":
        return SharedPrefixWorkload(
            seed=args.seed,
            groups=args.groups,
            system_prompt_len=args.system_prompt_len,
            turns=args.turns,
            active_sessions=args.active_sessions,
            zipf_s=args.group_popularity,
            input_len=args.input_len or parse_length("64"),
            output_len=args.output_len or parse_length("64"),
        )
    if kind == "trace":
        if not args.trace:
            raise ValueError("--workload trace needs --trace FILE")
        return ListWorkload(seed=args.seed, source=str(args.trace))
    return SyntheticWorkload(
        seed=args.seed, input_len=args.input_len or parse_length("256"), output_len=args.output_len or parse_length("128")
    )


def make_arrivals(args: argparse.Namespace) -> ArrivalProcess:
    kind = args.arrival or ("gamma" if args.burstiness not in (None, 1.0) else "poisson")
    profile = parse_profile(args.profile) if args.profile else RateProfile.constant(args.rate)
    return ArrivalProcess(profile, kind=kind, burstiness=args.burstiness or 1.0)


def plan(args: argparse.Namespace) -> tuple[Workload, Schedule | None, str, str]:
    """(workload, open-loop schedule or None for closed loop, mode, arrivals description)."""
    modes = [m for m in ("rate", "profile", "concurrency", "trace") if getattr(args, m) is not None]
    if len(modes) != 1:
        raise ValueError("give exactly one of --rate, --profile, --concurrency, --trace")
    if args.trace is None and args.duration is None and args.num_requests is None:
        raise ValueError("give --duration or --num-requests (or --trace)")
    if args.concurrency is None and args.trace is None and args.rate is None and args.arrival == "constant" and args.profile is None:
        raise ValueError("--arrival constant needs --rate or --profile")
    workload = make_workload(args)
    if args.trace is not None:
        rows = read_trace(args.trace, seed=args.seed)
        sched = cut_schedule(rows, duration_s=args.duration, num_requests=args.num_requests, speed=args.trace_speed)
        if isinstance(workload, ListWorkload):
            workload.specs = [s for _, s in sched]
        speed = f" x{args.trace_speed:g}" if args.trace_speed != 1 else ""
        return workload, sched, "open-loop", f"trace replay {args.trace}{speed}"
    if args.concurrency is not None:
        return workload, None, "closed-loop", f"concurrency {args.concurrency}"
    arrivals = make_arrivals(args)
    sched = build_schedule(workload, arrivals, seed=args.seed, duration_s=args.duration, num_requests=args.num_requests)
    return workload, sched, "open-loop", arrivals.describe()


def _config(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in vars(args).items():
        if k == "func":
            continue
        out[k] = v if isinstance(v, int | float | str | bool | type(None) | list | dict) else str(v)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from loadtests.report import RunInfo, build_result, format_table, write_outputs

    try:
        workload, schedule, mode, arrivals = plan(args)
        headers = dict(h.split(":", 1) for h in args.header)
        client = make_client(
            args.target,
            api=args.api,
            max_connections=args.max_inflight,
            health_url=args.health_url,
            grpc_channels=args.grpc_channels,
            temperature=args.temperature,
            extra_body=args.extra_body,
            headers={k.strip(): v.strip() for k, v in headers.items()},
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if schedule is not None and args.record_trace:
        write_trace(args.record_trace, schedule)
    opts = RunOptions(
        model=args.model,
        max_inflight=args.max_inflight,
        request_timeout_s=args.request_timeout,
        concurrency=args.concurrency,
        duration_s=args.duration,
        num_requests=args.num_requests,
        sample_interval_s=args.sample_interval,
        progress=not args.no_progress,
        keep_specs=schedule is None and args.record_trace is not None,
    )
    print(f"{args.target}: {mode}, {arrivals}; {workload.describe()}", file=sys.stderr)
    try:
        runner = Runner(client, opts)
        outcome = asyncio.run(runner.run(schedule=schedule, requests=workload.requests() if schedule is None else None))
    except Exception as exc:  # connection/listing errors before the first request: one line, not a traceback
        print(f"error: {args.target}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if schedule is None and args.record_trace:
        write_trace(args.record_trace, [(r.start_s, outcome.sent_specs[r.index]) for r in outcome.results if r.index in outcome.sent_specs])
    info = RunInfo(
        target=args.target,
        client="grpc" if args.target.startswith("grpc://") else "http",
        api=args.api,
        mode=mode,
        arrivals=arrivals,
        workload=workload.describe(),
        seed=args.seed,
        scheduled=len(schedule) if schedule is not None else len(outcome.results),
        window_s=args.duration if args.duration else (schedule[-1][0] if schedule else None),
        config=_config(args),
    )
    result = build_result(info, outcome, percentiles=args.percentiles, slo=args.slo)
    if args.record_trace:
        result["files"]["trace"] = str(args.record_trace)
    print(format_table(result))
    if args.out:
        files = write_outputs(args.out, result, outcome.results, plots=not args.no_plots)
        print(f"wrote {args.out / 'result.json'}" + (f", plots: {', '.join(files['plots'])}" if files["plots"] else ""), file=sys.stderr)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    try:
        workload, schedule, mode, arrivals = plan(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if schedule is None:
        print("error: a closed loop (--concurrency) has no schedule: its send times depend on the server", file=sys.stderr)
        return 2
    n = len(schedule)
    span = schedule[-1][0] if schedule else 0.0
    mean_in = sum(s.prompt_tokens for _, s in schedule) / n if n else 0.0
    mean_out = sum(s.output_tokens for _, s in schedule) / n if n else 0.0
    print(f"{mode}, {arrivals}; {workload.describe()}")
    print(f"{n} requests over {span:.2f}s ({n / span if span else 0:.2f} req/s); mean {mean_in:.0f} prompt / {mean_out:.0f} output tokens")
    if args.output:
        write_trace(args.output, schedule)
        print(f"wrote {args.output}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from loadtests import plots
    from loadtests.clients.base import RequestResult

    try:
        result = json.loads((args.dir / "result.json").read_text())
        results = []
        with (args.dir / "requests.jsonl").open() as f:
            for line in f:
                rec = json.loads(line)
                rec.pop("tpot_s", None)
                results.append(RequestResult(**rec))
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {args.dir}: {exc}", file=sys.stderr)
        return 1
    for p in plots.write_all(args.dir, result, results):
        print(f"wrote {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)
