"""After a controller restart: find the replicas that survived it, and clean up what none owns.

Replica actors are named (``llm-cluster-replica-<id>``) and detached, and so
are their placement groups, so both outlive the controller.  A restarted
controller lists the named actors of its namespace and asks each for its
health: ready ones are adopted as they are, one that was still starting is
awaited, one that was draining is drained and stopped (the controller decides
what to do; this module only finds and classifies).  A dead or wedged actor,
or one of a model no longer in the config, is killed with its group; groups
left without a replica (the old controller died mid-start) are removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group

from cluster.controller.replica import Replica, ReplicaState

log = logging.getLogger(__name__)

REPLICA_PREFIX = "llm-cluster-replica-"
#: How long one health call of an actor found at adoption may take.
HEALTH_TIMEOUT_S = 10.0


def replica_name(replica_id: str) -> str:
    """The Ray name of a replica's actor and of its placement group."""
    return f"{REPLICA_PREFIX}{replica_id}"


def placement_group_named(name: str) -> PlacementGroup | None:
    try:
        return ray.util.get_placement_group(name)
    except ValueError:
        return None


async def find_live_replicas(models: Collection[str], known: Collection[str]) -> list[Replica]:
    """Records of the live replica actors not in ``known``, each in the state its health answer says."""
    try:
        names = [n for n in ray.util.list_named_actors() if n.startswith(REPLICA_PREFIX)]
    except Exception:
        log.warning("cannot list named actors; adopting nothing", exc_info=True)
        return []
    found = await asyncio.gather(*(_adopt(name, models) for name in names if name.removeprefix(REPLICA_PREFIX) not in known))
    return [r for r in found if r is not None]


async def _adopt(name: str, models: Collection[str]) -> Replica | None:
    rid = name.removeprefix(REPLICA_PREFIX)
    try:
        actor = ray.get_actor(name)
        h = await asyncio.wait_for(actor.health.remote(), HEALTH_TIMEOUT_S)
    except Exception as exc:
        # Dead or wedged: it serves nothing; free its resources.
        log.warning("replica found dead at adoption; removing it", extra={"replica": rid, "error": repr(exc)[:300]})
        kill_orphan(name)
        return None
    model = h.get("model") or rid.rsplit("-", 1)[0]
    if model not in models:
        log.warning("replica of a model not in the config; removing it", extra={"replica": rid, "model": model})
        kill_orphan(name)
        return None
    r = Replica(replica_id=rid, model=model, actor=actor, pg=placement_group_named(name), node_id=h.get("node_id"))
    r.serve_from(h)
    r.started_at = float(h.get("started_at") or r.started_at)
    if h.get("ready"):
        r.state = ReplicaState.READY
    elif h.get("draining"):
        r.state = ReplicaState.DRAINING  # the previous controller was scaling it down
    else:
        r.state = ReplicaState.STARTING  # the previous controller's start() call still runs in the actor
    log.info("adopted live replica", extra={"replica": rid, "state": r.state.value, "placement_group": r.pg is not None})
    return r


async def wait_until_started(r: Replica, timeout_s: float) -> dict[str, Any] | None:
    """Poll an adopted STARTING replica until it is ready: its health answer, or None (gone, timed out, or no longer STARTING)."""
    deadline = time.monotonic() + timeout_s
    while r.state == ReplicaState.STARTING and time.monotonic() < deadline:
        try:
            h = await asyncio.wait_for(r.actor.health.remote(), HEALTH_TIMEOUT_S)
        except Exception:
            return None
        if h.get("ready"):
            return h
        await asyncio.sleep(0.5)
    return None


def kill_orphan(name: str) -> None:
    try:
        ray.kill(ray.get_actor(name), no_restart=True)
    except Exception:
        pass
    pg = placement_group_named(name)
    if pg is not None:
        remove_placement_group(pg)


def remove_orphan_placement_groups(owned_ids: Collection[str]) -> None:
    """Remove replica placement groups that no known replica owns (e.g. the old controller died mid-start)."""
    try:
        table = ray.util.placement_group_table()
    except Exception:
        return
    owned = {replica_name(rid) for rid in owned_ids}
    for info in table.values():
        name = info.get("name", "")
        if name.startswith(REPLICA_PREFIX) and name not in owned and info.get("state") != "REMOVED":
            pg = placement_group_named(name)
            if pg is not None:
                log.warning("removing an orphaned placement group", extra={"placement_group": name})
                remove_placement_group(pg)
