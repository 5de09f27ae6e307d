"""Keep a CPU replica's own processes off the cores its node's vLLM engines are bound to.

vLLM binds a CPU engine's OpenMP threads to the replica's cores (``VLLM_CPU_OMP_THREADS_BIND``); everything
else a replica runs (the actor's front end: the OpenAI layer, detokenizing, gRPC; vLLM's engine-core process,
which schedules every step; the worker's helper threads) is unbound, so Linux puts it on whichever core looks
free, the engine's core too, where each slice it takes is a slice the model does not run.  With a spare core
on the node (a lone replica on a 2-core machine: engine on core 0, the rest on core 1) a replica moves all its
unbound threads there; when the node's engines hold every core (several replicas) it leaves them free (moving
them would only crowd another engine's core instead).

The engines on the node are read from the node itself: the worker processes vLLM names ``VLLM::Worker*``, whose
OpenMP threads vLLM bound to a strict subset of the node's cores.  A replica checks again
now and then (:meth:`CpuAffinity.refresh`, from the controller's health checks), so a replica placed later on
the same node makes the earlier ones give the cores back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

#: The process title vLLM gives its worker processes (``VLLM::Worker``, ``VLLM::Worker_TP0``, ...).
WORKER_TITLE = "VLLM::Worker"


def others_cores(usable: set[int], engine_bindings: Iterable[set[int]]) -> set[int] | None:
    """The cores for everything on the node but the engines' OpenMP threads; None: no spare core, leave
    every thread free.  ``engine_bindings``: the cores each engine's OpenMP threads are bound to."""
    bound: set[int] = set()
    for cores in engine_bindings:
        bound |= cores
    spare = usable - bound
    return spare if spare and bound & usable else None


def thread_mask(current: set[int], in_worker: bool, others: set[int] | None, usable: set[int], placed: set[int] | None) -> set[int] | None:
    """The new mask of a thread now on ``current``, or None to leave it.

    A vLLM worker's thread bound to fewer than all cores is an engine's OpenMP thread (or was born of one):
    left.  So is any thread someone else placed (a mask that is neither every usable core nor ``placed``, the
    set this placement gave out before).  The rest get ``others``, or every usable core when there is no
    spare one (which gives back what an earlier placement took, and leaves untouched threads as they are).
    """
    if in_worker and current < usable:
        return None
    if current != usable and current != placed:
        return None
    want = others if others is not None else usable
    return None if current == want else want


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _bound_cores(pid: int, usable: set[int]) -> set[int]:
    """The union of the cores of ``pid``'s threads that are bound to fewer than all ``usable`` cores."""
    cores: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            mask = set(os.sched_getaffinity(int(tid)))
            if mask < usable:
                cores |= mask
    return cores


def engine_bindings(usable: set[int]) -> list[set[int]]:
    """The cores each vLLM CPU worker on this machine has bound its (OpenMP) threads to."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if not _read(f"/proc/{pid}/comm").startswith(WORKER_TITLE):
                continue
            cores = _bound_cores(int(pid), usable)
        except OSError:
            continue  # gone meanwhile
        if cores:
            out.append(cores)
    return out


def node_processes(pid: int) -> list[int]:
    """``pid``'s processes and, for a Ray worker (a child of its node's raylet), the rest of the Ray node:
    the raylet and everything under it (the other actors: router, controller, replicas; Ray's agents), and
    the processes of the same Ray session (the GCS, the dashboard, the log monitor on a head node)."""
    import psutil

    try:
        me = psutil.Process(pid)
        parent = me.parent()
        if parent is None or parent.name() != "raylet":
            return [pid, *(c.pid for c in me.children(recursive=True))]
        session = next((a.split("=", 1)[1] for a in parent.cmdline() if a.startswith("--session_dir=")), None)
        out = {parent.pid, *(c.pid for c in parent.children(recursive=True))}
    except psutil.Error:
        return [pid]
    if session:
        for p in psutil.process_iter(["pid", "cmdline"]):
            if any(session in a for a in p.info["cmdline"] or ()):
                out.add(p.pid)
    return sorted(out)


def apply(pids: Iterable[int], others: set[int] | None, usable: set[int], placed: set[int] | None) -> int:
    """Set every thread of ``pids`` to what :func:`thread_mask` says; returns how many threads changed."""
    changed = 0
    for pid in pids:
        try:
            in_worker = _read(f"/proc/{pid}/comm").startswith(WORKER_TITLE)
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                mask = thread_mask(set(os.sched_getaffinity(tid)), in_worker, others, usable, placed)
                if mask is not None:
                    os.sched_setaffinity(tid, mask)
                    changed += 1
            except OSError:
                continue  # the thread ended meanwhile
    return changed


def node_cores() -> set[int]:
    """Every core this process may be given (its cpuset's): a Ray worker forked by a raylet that an earlier
    placement kept off the engines' cores starts with that narrower mask, and an engine must bind from all."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return set(os.sched_getaffinity(0))


class CpuAffinity:
    """One replica's share of the node's cores for its unbound threads (see the module docstring)."""

    def __init__(self, usable: set[int], min_interval_s: float = 10.0) -> None:
        self.usable = set(usable)
        self.min_interval_s = min_interval_s
        #: The cores given to everything but the engines at the last look; None: none.
        self.others: set[int] | None = None
        self._checked = float("-inf")

    def refresh(self, force: bool = False) -> None:
        """Look at the node's engines again (at most every ``min_interval_s``) and move this replica's threads."""
        now = time.monotonic()
        if not force and now - self._checked < self.min_interval_s:
            return
        self._checked = now
        bindings = engine_bindings(self.usable)
        engine_cores = set().union(*bindings) if bindings else set()
        others = others_cores(self.usable, bindings)
        changed = apply(node_processes(os.getpid()), others, self.usable, self.others)
        if changed or others != self.others:
            log.info(
                "replica threads placed",
                extra={"engine_cores": sorted(engine_cores), "others": sorted(others or self.usable), "threads": changed},
            )
        self.others = others


def normal_priority() -> int:
    """Bring this process (a Ray worker) back to nice 0 before it spawns its engine; returns the nice it runs at.

    Ray starts its workers at nice 15 unless the cluster was started with ``RAY_worker_niceness=0`` (``llm-cluster
    up`` does that; a Ray cluster someone started with plain ``ray start`` does not), and vLLM's engine-core and
    worker processes inherit it: on a shared core they then get a 28th of its time against any ordinary process.
    Lowering a nice needs ``CAP_SYS_NICE`` (or ``RLIMIT_NICE``): without it the replica says how to fix the cluster.
    On Linux a nice belongs to a thread (a new thread or process inherits its creator's), so every thread of the
    process is set: the engine is spawned from the actor's event-loop thread, not the one that runs this.
    """
    before = os.getpriority(os.PRIO_PROCESS, 0)
    if before <= 0:
        return before
    try:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.setpriority(os.PRIO_PROCESS, int(tid), 0)
    except OSError as exc:
        log.warning(
            "replica runs at Ray's worker niceness; start Ray with RAY_worker_niceness=0 for full engine speed",
            extra={"nice": before, "error": str(exc)},
        )
        return before
    log.info("replica raised its priority to nice 0 (Ray started it at a higher nice)", extra={"nice_before": before})
    return 0
