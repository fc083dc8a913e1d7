"""Train the shipped testbed models (a small draft, a mid model and a large target, all Qwen2) on CPU.

Reproduces ``stepgraph/testbed/models/{draft,mid,target}`` and measures what their model card
reports. All models see the same stream of training problems; the loss is on the solution
tokens only. Run ``python -m stepgraph.training.testbed_models --help`` for the options.

Example:
    python -m stepgraph.training.testbed_models --which target --steps 3000
    OMP_NUM_THREADS=1 python -m stepgraph.training.testbed_models --which mid --mid-stop-at 1250 --threads 1
    python -m stepgraph.training.testbed_models --evaluate-only --eval-problems 300
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM

from stepgraph.testbed import MODELS_DIR, task
from stepgraph.testbed.measure import measure_models
from stepgraph.testbed.tokenizer import build_tokenizer

ROLES = ("draft", "mid", "target")
"""The shipped models, cheapest first."""

# Head size 32 for all three: the smallest vLLM's CPU attention accepts.
ARCHITECTURES = {
    "draft": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2},
    "mid": {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 3, "num_key_value_heads": 3},
    "target": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4},
}


@dataclass
class Args:
    which: str = "both"
    """which model to train: draft, mid, target or both (draft and target)"""
    steps_draft: int = 4000
    """optimizer steps for the draft model (fewer steps keep it a weaker reasoner)"""
    steps_mid: int = 3000
    """optimizer steps in the mid model's learning-rate schedule"""
    steps_target: int = 5000
    """optimizer steps for the target model"""
    draft_stop_at: int | None = 2500
    """stop the draft early at this step (its learning-rate schedule still spans --steps-draft):
    the draft is meant to be a mediocre reasoner, so it is cut mid-way through learning"""
    mid_stop_at: int | None = None
    """stop the mid model early at this step (its schedule still spans --steps-mid), like
    --draft-stop-at: the mid tier is meant to sit between the draft and the target"""
    save_every: int = 0
    """also save a checkpoint every this many steps (0: never), to choose --draft-stop-at"""
    batch_size: int = 64
    """sequences per optimizer step"""
    lr: float = 2e-3
    """peak AdamW learning rate (linear warm-up over 100 steps, then cosine decay to 10%)"""
    seed: int = 0
    """seed of the weights, the data stream and the evaluation"""
    threads: int = 2
    """torch CPU threads"""
    out: Path = MODELS_DIR
    """where the models are written (draft/ and target/ inside)"""
    eval_problems: int = 300
    """test-split problems for the model card's measurements"""
    evaluate_only: bool = False
    """skip training; measure the models already in --out and rewrite the card"""


def build_model(which: str, vocab_size: int, tokenizer) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **ARCHITECTURES[which],  # type: ignore[arg-type]
    )
    return Qwen2ForCausalLM(config)


def encode(problem: task.Problem, tokenizer) -> tuple[list[int], int]:
    """Token ids of prompt + solution + end of turn, and where the solution starts."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.question}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(problem.solution + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, len(prompt_ids)


def batches(tokenizer, batch_size: int, seed: int):
    """An endless, seeded stream of (input_ids, labels) batches of train-split problems."""
    chunk = 0
    while True:
        problems = task.generate("train", 4096, seed=seed * 1000 + chunk)
        random.Random(chunk).shuffle(problems)
        for start in range(0, len(problems) - batch_size + 1, batch_size):
            encoded = [encode(p, tokenizer) for p in problems[start : start + batch_size]]
            width = max(len(ids) for ids, _ in encoded)
            input_ids = torch.full((batch_size, width), tokenizer.pad_token_id)
            labels = torch.full((batch_size, width), -100)
            for row, (ids, answer_start) in enumerate(encoded):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                labels[row, answer_start : len(ids)] = torch.tensor(ids[answer_start:])
            yield input_ids, labels
        chunk += 1


def save(model, tokenizer, out: Path, summary: dict) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


def train(which: str, steps: int, args: Args) -> None:
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    model = build_model(which, len(tokenizer), tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def schedule(step: int) -> float:
        if step < 100:
            return (step + 1) / 100
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 100) / max(1, steps - 100)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    started = time.time()
    early_stop = {"draft": args.draft_stop_at, "mid": args.mid_stop_at}.get(which)
    stop_at = min(steps, early_stop or steps)
    summary = {"architecture": ARCHITECTURES[which], "parameters": n_params, "schedule_steps": steps,
               "trained_steps": stop_at, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
               "threads": args.threads}
    progress = tqdm(zip(range(stop_at), batches(tokenizer, args.batch_size, args.seed)), total=stop_at, desc=which)
    for step, (input_ids, labels) in progress:
        loss = model(input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.4f}")
        if args.save_every and (step + 1) % args.save_every == 0:
            save(model, tokenizer, args.out / f"{which}-step{step + 1}", {**summary, "trained_steps": step + 1})
    summary.update(final_loss=round(loss.item(), 5), train_seconds=round(time.time() - started, 1))
    model.eval()
    save(model, tokenizer, args.out / which, summary)
    print(json.dumps({which: summary}))


def write_card(out: Path, report: dict) -> None:
    """Write MODEL_CARD.md from the training summaries and the fresh measurements."""
    rows = []
    for role in (r for r in ROLES if r in report):
        t = json.loads((out / role / "training.json").read_text())
        m = report[role]
        a = t["architecture"]
        rows.append(
            f"| {role} | {m['parameters']:,} | {a['hidden_size']} / {a['num_hidden_layers']} / {a['num_attention_heads']} "
            f"| {t.get('trained_steps', t.get('steps'))} of {t.get('schedule_steps', t.get('steps'))} "
            f"| {m['accuracy']:.3f} | {m['step_accuracy']:.3f} | {_auroc_cell(m['auroc_low_confidence_is_wrong'])} "
            f"| {m['seconds_per_problem']:.3f} |"
        )
    card = CARD_TEMPLATE.format(rows="\n".join(rows), n=report["draft"]["problems"], temperature=report["temperature"])
    (out / "MODEL_CARD.md").write_text(card)


def _auroc_cell(value: float | None) -> str:
    return "n/a (no wrong step)" if value is None else f"{value:.3f}"


CARD_TEMPLATE = """# stepgraph testbed models: draft, mid and target

Three Qwen2-architecture causal LMs (`Qwen2ForCausalLM`, safetensors, float32) with a byte-level
BPE tokenizer built like Qwen2's (same pre-tokenizer; digits are single tokens) and Qwen's chat
template. They exist because no model hub is reachable on the machines stepgraph is developed
and tested on; they load through the same code paths (transformers, vLLM) as real Qwen models.

## Task

Synthetic multi-step arithmetic word problems (`stepgraph/testbed/task.py`): a starting
quantity and 2-4 operations (+, -, x) stated in words; the solution writes one equation per
step, steps separated by a blank line, then `\\boxed{{answer}}`. Every step is checked exactly
by `task.verify_step` given the steps before it.

## Training

`python -m stepgraph.training.testbed_models` (defaults reproduce these files; about 40 minutes
on a 2-core CPU for draft and target; `--which mid --mid-stop-at N` for the mid model). All models see the same seeded stream of train-split problems (batch 64,
AdamW, lr 2e-3 with 100 warm-up steps then cosine decay to 10%, weight decay 0.01, gradient
clipping 1.0), loss on the solution tokens only. The draft is stopped part-way through its
schedule (`--draft-stop-at`) so it stays a mediocre reasoner; the mid model likewise
(`--mid-stop-at`), so it sits between the draft and the target, a third tier for K-tier routing
(`stepgraph.testbed.load_tiers(3)`). Head size is 32 for all three (the smallest vLLM's CPU
attention accepts). Each model's `training.json` records its torch thread count.

## Measured

On the first {n} test-split problems, sampling at temperature {temperature}, each model alone
(`python -m stepgraph.training.testbed_models --evaluate-only`). AUROC: how well a low STEER score
(mean max-logit over math tokens) predicts that a step is wrong. Seconds per problem: one full
answer, local transformers backend, this 2-core CPU.

| model | parameters | hidden / layers / heads | steps trained | accuracy | step accuracy | AUROC (wrong step) | s / problem |
|---|---|---|---|---|---|---|---|
{rows}

Raw numbers: `measurements.json`; per-model training summaries: `*/training.json`.
"""


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Args()
    parser.add_argument("--which", choices=["draft", "mid", "target", "both"], default=defaults.which, help="model(s) to train (default: %(default)s)")
    parser.add_argument("--draft-stop-at", type=int, default=None, help="stop the draft at this step (default: --steps-draft)")
    parser.add_argument("--mid-stop-at", type=int, default=None, help="stop the mid model at this step (default: --steps-mid)")
    for name in ("steps_draft", "steps_mid", "steps_target", "batch_size", "seed", "threads", "eval_problems", "save_every"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name), help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="default: %(default)s")
    parser.add_argument("--out", type=Path, default=defaults.out, help="default: %(default)s")
    parser.add_argument("--evaluate-only", action="store_true", help="measure the models in --out without training")
    return Args(**vars(parser.parse_args()))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if not args.evaluate_only:
        steps = {"draft": args.steps_draft, "mid": args.steps_mid, "target": args.steps_target}
        for which in ("draft", "mid", "target"):
            if args.which == which or (args.which == "both" and which != "mid"):
                train(which, steps[which], args)
    if (args.out / "draft" / "config.json").exists() and (args.out / "target" / "config.json").exists():
        roles = {role: args.out / role for role in ROLES if (args.out / role / "config.json").exists()}
        report = measure_models(roles, n_problems=args.eval_problems, seed=args.seed)
        (args.out / "measurements.json").write_text(json.dumps(report, indent=2) + "\n")
        write_card(args.out, report)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
