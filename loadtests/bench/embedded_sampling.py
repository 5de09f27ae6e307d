"""How sure the embedded model is of the README's answer, under given sampling defaults, without vLLM.

    python -m loadtests.bench.embedded_sampling [--samples 40] [--temperature 0.2] [--top-p 0.9] [--seed 0]

Loads the prepared embedded SmolLM2-135M-Instruct directory (``llm-cluster models prepare``) with transformers in
float32, applies its chat template to the README's question ("What is the capital of France?"), and prints the
first token's six most likely choices at temperature 1 and at ``--temperature``, then how many of ``--samples``
sampled answers (``--temperature``, ``--top-p``, 24 new tokens) name Paris, and the greedy answer.  It is why the
embedded model's ``generation_config.json`` says greedy (``cluster/models/prepare.py``): the file shipped on
PyPI is a 4-bit quantization, much less sure than the bf16 model its card's recommendation was made for.
"""

from __future__ import annotations

import argparse

QUESTION = "What is the capital of France?"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=40, help="sampled answers to count (default 40)")
    ap.add_argument("--temperature", type=float, default=0.2, help="sampling temperature (default: the model card's 0.2)")
    ap.add_argument("--top-p", type=float, default=0.9, help="nucleus (default: the model card's 0.9)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed for the samples")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cluster.models.prepare import prepare_embedded

    path = str(prepare_embedded("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    for temperature in (1.0, args.temperature):
        top = torch.topk(torch.softmax(logits / temperature, -1), 6)
        pairs = ", ".join(f"{tok.decode([int(i)])!r} {float(p):.3f}" for p, i in zip(top.values, top.indices, strict=True))
        print(f"first token at temperature {temperature:g}: {pairs}")
    torch.manual_seed(args.seed)
    batch = ids.repeat(args.samples, 1)
    out = model.generate(
        batch,
        attention_mask=torch.ones_like(batch),
        do_sample=True,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=24,
    )
    answers = [tok.decode(o[ids.shape[1] :], skip_special_tokens=True) for o in out]
    named = sum("Paris" in a for a in answers)
    print(f"temperature {args.temperature:g}, top_p {args.top_p:g}: {named} of {args.samples} answers name Paris")
    for a in [a for a in answers if "Paris" not in a][:3]:
        print(f"  e.g. {a[:70]!r}")
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
    print(f"greedy: {tok.decode(greedy[0][ids.shape[1] :], skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
