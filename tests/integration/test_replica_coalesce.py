"""A replica whose writer falls behind its engine sends several tokens per message, and they stay exact for a resume."""

import asyncio
import json

from cluster.engine.sim import SimEngine, SimParams
from cluster.proto import replica_pb2
from cluster.replica.server import ReplicaServicer

BODY = {"model": "sim", "prompt": "a story about the sea", "max_tokens": 40, "stream": True, "temperature": 0}


async def relay(svc: ReplicaServicer, rid: str, pause_s: float, resume: replica_pb2.Resume | None = None):
    req = replica_pb2.OpenAIRequest(
        request_id=rid, endpoint=replica_pb2.COMPLETIONS, body=json.dumps(BODY | {"request_id": rid}).encode(), format=replica_pb2.SSE
    )
    if resume is not None:
        req.resume.CopyFrom(resume)
    out = []
    async for c in svc.OpenAI(req, None):
        out.append(c)
        await asyncio.sleep(pause_s)  # the time the message takes to leave
    return out


def texts(data: bytes) -> str:
    events = [json.loads(e[6:]) for e in data.split(b"\n\n") if e.startswith(b"data: {")]
    return "".join(ch["text"] for e in events for ch in e.get("choices", []))


async def test_a_slow_writer_gets_merged_chunks_whose_ids_text_and_bytes_match_the_undisturbed_stream():
    engine = SimEngine(SimParams.from_dict({"time_scale": 0.05, "seed": 0}), model_name="sim")
    svc = ReplicaServicer(engine, "r0", "sim")
    try:
        fast = await relay(svc, "fast", 0.0)
        slow = await relay(svc, "slow", 0.03)
        assert len(slow) < len(fast)  # several tokens went as one message
        for got in (fast, slow):
            assert got[0].status == 200 and got[-1].finish_reason == "length"
            assert got[-1].completion_tokens == 40
        ids = [i for c in fast for i in c.token_ids]
        assert [i for c in slow for i in c.token_ids] == ids
        assert "".join(c.text for c in slow) == "".join(c.text for c in fast) == texts(b"".join(c.data for c in slow))

        # A resume from what a merged stream had relayed continues exactly (what the router sends on migration).
        cut = len(slow) // 2
        sent = slow[:cut]
        resume = replica_pb2.Resume(token_ids=[i for c in sent for i in c.token_ids], text="".join(c.text for c in sent))
        rest = await relay(svc, "resumed", 0.0, resume)
        assert [i for c in sent + rest for i in c.token_ids] == ids
        assert "".join(c.text for c in sent + rest) == "".join(c.text for c in fast)
        assert not svc.in_flight
    finally:
        await engine.shutdown()
