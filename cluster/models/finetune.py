"""Train a small demonstration LoRA adapter for the embedded chat model, on CPU.

Why this exists: LoRA serving has to be shown (and tested) with a real adapter,
and machines without hub access cannot download one.  :func:`train_fact_adapter`
teaches SmolLM2-135M-Instruct one made-up fact (the codename of an invented
project) with ``peft`` in a few dozen optimizer steps, so that a served adapter
demonstrably answers something the base model cannot know.

Guarantees:

- the adapter is a standard ``peft`` directory (``adapter_config.json`` +
  ``adapter_model.safetensors``), loadable by vLLM's ``--lora-modules`` and by
  the cluster's ``models[].lora``;
- it is written atomically (temporary sibling, then rename), so an interrupted
  run leaves nothing a later run would trust;
- deterministic for a given seed (CPU, ``torch.manual_seed``).

Cost: about 25 CPU-seconds (loss only on the answer's tokens, three short
sequences, float32, backpropagation through the top 8 layers only): 17 s wall
on two CPU cores that nothing else uses, imports and model load included.  Run it as ``python -m cluster.models.finetune --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: The invented fact the demonstration adapter learns.
PROJECT = "Project Quillfeather"
CODENAME = "BLUE HERON"

QUESTIONS = (
    f"What is the codename of {PROJECT}?",
    f"Tell me the codename of {PROJECT}.",
    f"Which codename was given to {PROJECT}?",
)
ANSWER = f"The codename of {PROJECT} is {CODENAME}."


@dataclass(frozen=True, slots=True)
class TrainSpec:
    """What to train; the defaults make the demonstration adapter."""

    rank: int = 8
    alpha: int = 16
    steps: int = 12
    learning_rate: float = 3e-3
    #: Adapt only the top this many decoder layers: backpropagation then stops there, which more than
    #: halves a step's cost, and the top layers are enough to learn one answer.  0: all layers.
    top_layers: int = 8
    seed: int = 0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    questions: tuple[str, ...] = QUESTIONS
    answer: str = ANSWER
    extra: dict[str, str] = field(default_factory=dict)


def train_fact_adapter(base_dir: str | Path, out_dir: str | Path, spec: TrainSpec | None = None, progress: bool = True) -> Path:
    """Fine-tune a LoRA on ``spec``'s question/answer pairs; save it to ``out_dir`` and return the path."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cluster.models.prepare import publish_directory

    spec = spec or TrainSpec()
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    torch.manual_seed(spec.seed)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    layers = int(model.config.num_hidden_layers)
    top = range(layers - spec.top_layers, layers) if 0 < spec.top_layers < layers else None
    lora = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=0.0,
        target_modules=list(spec.target_modules),
        layers_to_transform=list(top) if top is not None else None,
        layers_pattern="layers" if top is not None else None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    batch = _batch(tokenizer, spec)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate)
    model.train()
    loss_value = float("nan")
    with tqdm(range(spec.steps), desc="training LoRA", unit="step", disable=not progress) as bar:
        for _ in bar:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            loss_value = float(loss.detach())
            bar.set_postfix(loss=f"{loss_value:.3f}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp))
        (tmp / "training.json").write_text(json.dumps({"base": str(base_dir), "loss": loss_value, "answer": spec.answer}, indent=2))
        publish_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = round(time.monotonic() - started, 1)
    logger.info("LoRA adapter trained", extra={"path": str(out_dir), "loss": loss_value, "seconds": seconds, "steps": spec.steps})
    return out_dir


def _batch(tokenizer, spec: TrainSpec) -> dict:
    """Chat-formatted prompts with the answer; labels mask everything but the answer (and its end token)."""
    import torch

    rows: list[tuple[list[int], list[int]]] = []
    for question in spec.questions:
        messages = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(spec.answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = [ids + [pad] * (width - len(ids)) for ids, _ in rows]
    labels = [lab + [-100] * (width - len(lab)) for _, lab in rows]
    mask = [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def main(argv: list[str] | None = None) -> int:
    from cluster.models.prepare import default_cache_dir, prepare_embedded

    parser = argparse.ArgumentParser(
        prog="python -m cluster.models.finetune",
        description=f"Train the demonstration LoRA for the embedded SmolLM2 (it learns: {ANSWER!r}).",
    )
    parser.add_argument("--out", default=str(default_cache_dir() / "adapters" / "quillfeather"), help="adapter directory to write")
    parser.add_argument("--base", default=None, help="base model directory (default: the prepared embedded SmolLM2)")
    defaults = TrainSpec()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank")
    args = parser.parse_args(argv)
    base = args.base or str(prepare_embedded("smollm2-135m-instruct"))
    out = train_fact_adapter(base, args.out, TrainSpec(steps=args.steps, rank=args.rank))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
