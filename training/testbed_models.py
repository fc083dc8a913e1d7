"""Train the shipped testbed models (a small draft, a mid model and a large target, all Qwen2) on CPU.

Reproduces ``stepgraph/testbed/models/{draft,mid,target}`` and measures what their model card
reports. All models see the same stream of training problems; the loss is on the solution
tokens only. Run ``stepgraph testbed-models --help`` for the options.

Task v2 (``--task v2``, ``stepgraph.testbed.wordproblems``) trains from length-bucketed batches
and checkpoints (model, optimizer, scheduler, data-stream position, RNG) every
``--checkpoint-every`` steps to ``<out>/<which>-checkpoint.pt``; ``--resume`` continues from it
exactly where it stopped.

Example:
    stepgraph testbed-models --which target --steps-target 3000
    OMP_NUM_THREADS=1 stepgraph testbed-models --task v2 --which target --threads 1 --out /tmp/v2 --resume
    OMP_NUM_THREADS=1 stepgraph testbed-models --which mid --mid-stop-at 1250 --threads 1
    stepgraph testbed-models --evaluate-only --eval-problems 300
    OMP_NUM_THREADS=1 stepgraph testbed-models --task v2 --evaluate-only --threads 1 --out /tmp/v2
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from stepgraph.testbed import MODELS_DIR, task, wordproblems
from stepgraph.testbed.measure import V2_SPLITS, measure_models
from stepgraph.testbed.tokenizer import MAX_LENGTH_V2, build_tokenizer, build_tokenizer_v2

ROLES = ("draft", "mid", "target")
"""The shipped models, cheapest first."""

# Head size 32 for all three: the smallest vLLM's CPU attention accepts.
ARCHITECTURES = {
    "draft": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2},
    "mid": {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 3, "num_key_value_heads": 3},
    "target": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4},
}

# Task v2: head size 32 (vLLM CPU attention takes 32, 64 or >= 80); target ≈ 9x the draft. The draft is
# deep and narrow (4 layers, MLP 128): its wrong steps are 36% arithmetic slips, a minority as for real models on
# GSM8K; the 2-layer draft's were 42% (BENCHMARKS.md, "The draft's wrong steps by kind").
ARCHITECTURES_V2 = {
    "draft": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 2},
    "mid": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4},
    "target": {"hidden_size": 192, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 6},
}
TASKS = ("v1", "v2")
BUCKET_POOL = 16
"""Length bucketing: batches are cut from runs of this many batches' worth of problems sorted by length."""


@dataclass
class Args:
    task: str = "v1"
    """which task: v1 (task.py, the shipped models) or v2 (wordproblems.py)"""
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
    """skip training; measure the models already in --out and rewrite the card (v2: only then)"""
    checkpoint_every: int = 0
    """write a resumable checkpoint every this many steps (0: never)"""
    resume: bool = False
    """continue from <out>/<which>-checkpoint.pt"""
    chunk_problems: int = 4096
    """problems generated per chunk of the data stream"""
    tokenizer: Path | None = None
    """a saved tokenizer to use instead of building one (so every tier shares the target run's)"""
    question_loss_weight: float = 0.0
    """weight of the language-model loss on the prompt (the question) beside the solution's: with it
    the model also learns what in-domain questions look like, so its question log-likelihood can
    flag an off-domain question (issue 28)"""


def build_model(which: str, vocab_size: int, tokenizer, task_name: str = "v1") -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=256 if task_name == "v1" else MAX_LENGTH_V2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(ARCHITECTURES if task_name == "v1" else ARCHITECTURES_V2)[which],  # type: ignore[arg-type]
    )
    return Qwen2ForCausalLM(config)


def encode(problem: task.Problem | wordproblems.WordProblem, tokenizer) -> tuple[list[int], int]:
    """Token ids of prompt + solution + end of turn, and where the solution starts."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": problem.question}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(problem.solution + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, len(prompt_ids)


def _pad(encoded: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id)
    labels = torch.full((len(encoded), width), -100)
    for row, (ids, answer_start) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, answer_start : len(ids)] = torch.tensor(ids[answer_start:])
    return input_ids, labels


def batches(tokenizer, batch_size: int, seed: int, task_name: str = "v1", start: tuple[int, int] = (0, 0),
            chunk_problems: int = 4096) -> Iterator[tuple[tuple[int, int], torch.Tensor, torch.Tensor]]:
    """An endless, seeded stream of ((chunk, batch), input_ids, labels) of train-split problems.

    Each chunk is a pure function of (seed, chunk), so the stream can start at any position
    (``start``: the chunk and the batch inside it), which is how a resumed run continues. v1
    keeps the shipped models' order; v2 sorts runs of problems by length before cutting
    batches (and shuffles the batches), so little compute goes to padding.
    """
    chunk, first = start
    while True:
        if task_name == "v1":
            problems: list = task.generate("train", chunk_problems, seed=seed * 1000 + chunk)
            random.Random(chunk).shuffle(problems)
            encoded = [encode(p, tokenizer) for p in problems]
            order = [list(range(i, i + batch_size)) for i in range(0, len(encoded) - batch_size + 1, batch_size)]
        else:
            problems = wordproblems.generate("train", chunk_problems, seed=seed * 1000 + chunk)
            rng = random.Random(f"{seed}:{chunk}")
            rng.shuffle(problems)
            encoded = [encode(p, tokenizer) for p in problems]
            pool = batch_size * BUCKET_POOL
            order = []
            for i in range(0, len(encoded) - batch_size + 1, pool):
                run = sorted(range(i, min(i + pool, len(encoded))), key=lambda j: len(encoded[j][0]))
                order += [run[k : k + batch_size] for k in range(0, len(run) - batch_size + 1, batch_size)]
            rng.shuffle(order)
        for index in range(first, len(order)):
            input_ids, labels = _pad([encoded[j] for j in order[index]], tokenizer.pad_token_id)
            yield (chunk, index), input_ids, labels
        chunk, first = chunk + 1, 0


def save(model, tokenizer, out: Path, summary: dict) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


_TOKENIZERS: dict[str, object] = {}


def tokenizer_for(task_name: str):
    """The task's tokenizer (built once per process: it is deterministic)."""
    if task_name not in _TOKENIZERS:
        _TOKENIZERS[task_name] = build_tokenizer() if task_name == "v1" else build_tokenizer_v2()
    return _TOKENIZERS[task_name]


def checkpoint_path(out: Path, which: str) -> Path:
    return out / f"{which}-checkpoint.pt"


def write_checkpoint(path: Path, state: dict) -> None:
    """Write atomically (a temp file, then rename), so an interrupted write never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def data_fingerprint(task_name: str, seed: int) -> str:
    """A hash of the data stream's first problems: it changes when the task generator does."""
    generator = task.generate if task_name == "v1" else wordproblems.generate
    questions = "\n".join(p.question for p in generator("train", 32, seed=seed * 1000))  # type: ignore[operator]
    return hashlib.sha256(questions.encode()).hexdigest()[:16]


def train(which: str, steps: int, args: Args) -> None:
    torch.manual_seed(args.seed)
    # The run's tokenizer is kept beside its checkpoint: a resumed run reads it back, so a later
    # change to the generator (which the v2 tokenizer is trained on) cannot change its vocabulary.
    tokenizer_dir = args.out / f"{which}-tokenizer"
    if args.resume and tokenizer_dir.exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    elif args.tokenizer is not None:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
        if args.checkpoint_every:
            tokenizer.save_pretrained(tokenizer_dir)
    else:
        tokenizer = tokenizer_for(args.task)
        if args.checkpoint_every:
            tokenizer.save_pretrained(tokenizer_dir)
    model = build_model(which, len(tokenizer), tokenizer, args.task)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def schedule(step: int) -> float:
        if step < 100:
            return (step + 1) / 100
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 100) / max(1, steps - 100)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    early_stop = {"draft": args.draft_stop_at, "mid": args.mid_stop_at}.get(which)
    stop_at = min(steps, early_stop or steps)
    architectures = ARCHITECTURES if args.task == "v1" else ARCHITECTURES_V2
    summary = {"task": args.task, "architecture": architectures[which], "parameters": n_params, "schedule_steps": steps,
               "trained_steps": stop_at, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
               "threads": args.threads, "chunk_problems": args.chunk_problems,
               "data_fingerprint": data_fingerprint(args.task, args.seed)}
    if args.question_loss_weight:  # recorded only when used, so earlier checkpoints still resume
        summary["question_loss_weight"] = args.question_loss_weight
    step, position, seen = 0, (0, 0), {"tokens": 0, "problems": 0, "seconds": 0.0}
    ckpt = checkpoint_path(args.out, which)
    if args.resume:
        if not ckpt.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}; run without --resume to start fresh.")
        state = torch.load(ckpt, weights_only=True)
        if state["summary"].get("data_fingerprint") != summary["data_fingerprint"]:
            print(f"warning: the task generator changed since {ckpt} was written; the resumed data stream differs.")
            state["summary"]["data_fingerprint"] = summary["data_fingerprint"]
        free = ("threads", "trained_steps")  # a resumed run may use other threads and stop elsewhere
        if {k: v for k, v in state["summary"].items() if k not in free} != {k: v for k, v in summary.items() if k not in free}:
            raise ValueError(f"--resume: {ckpt} was written with other settings {state['summary']}; pass the same options.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, position, seen = state["step"], tuple(state["position"]), state["seen"]
    model.train()
    started = time.time() - seen["seconds"]
    stream = batches(tokenizer, args.batch_size, args.seed, args.task, position, args.chunk_problems)  # type: ignore[arg-type]
    progress = tqdm(total=stop_at, initial=step, desc=which, mininterval=0.1 if sys.stderr.isatty() else 30)  # a log file stays small
    loss = torch.tensor(float("nan"))
    while step < stop_at:
        (chunk, index), input_ids, labels = next(stream)
        attention_mask = (input_ids != tokenizer.pad_token_id).long()
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        loss = out.loss
        if args.question_loss_weight:
            loss = loss + args.question_loss_weight * prompt_loss(out.logits, input_ids, labels, attention_mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        seen["tokens"] += int(attention_mask.sum())
        seen["problems"] += len(input_ids)
        seen["seconds"] = time.time() - started
        progress.update(1)
        if step % 50 == 1:
            progress.set_postfix(loss=f"{loss.item():.4f}", tok_s=f"{seen['tokens'] / max(seen['seconds'], 1e-9):.0f}")
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            write_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "step": step,
                                    "position": [chunk, index + 1], "seen": seen, "summary": summary,
                                    "loss": loss.item()})
            progress.write(json.dumps({"checkpoint": step, "loss": round(loss.item(), 4), **seen}))
        if args.save_every and step % args.save_every == 0:
            save(model, tokenizer, args.out / f"{which}-step{step}", {**summary, "trained_steps": step})
    progress.close()
    summary.update(final_loss=round(loss.item(), 5), train_seconds=round(seen["seconds"], 1), tokens_seen=seen["tokens"],
                   problems_seen=seen["problems"])
    model.eval()
    save(model, tokenizer, args.out / which, summary)
    print(json.dumps({which: summary}))


def export_checkpoint(out: Path, which: str, dest: Path) -> Path:
    """Save ``<out>/<which>-checkpoint.pt`` (a run still training) as a model directory at ``dest``, to measure it.

    Its ``training.json`` is the checkpoint's summary at the step it was written, with what it had seen.
    """
    state = torch.load(checkpoint_path(out, which), weights_only=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out / f"{which}-tokenizer")
    model = build_model(which, len(tokenizer), tokenizer, state["summary"]["task"])
    model.load_state_dict(state["model"])
    seen = state["seen"]
    save(model.eval(), tokenizer, dest, {**state["summary"], "trained_steps": state["step"], "tokens_seen": seen["tokens"],
                                         "problems_seen": seen["problems"], "train_seconds": round(seen["seconds"], 1)})
    return dest


def prompt_loss(logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss on the prompt's tokens (not padding, not the solution the labels hold)."""
    targets = input_ids[:, 1:]
    prompt = (labels[:, 1:] == -100) & (attention_mask[:, 1:] == 1)
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
    return (per_token * prompt).sum() / prompt.sum().clamp(min=1)


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


def write_card_v2(out: Path, report: dict) -> None:
    """Write MODEL_CARD.md for task v2: each tier's training summary, then its measurements per split."""
    roles = [r for r in ROLES if r in report["test"]]
    training = []
    for role in roles:
        t = json.loads((out / role / "training.json").read_text())
        a = t["architecture"]
        data = f"{t['problems_seen']:,} problems, {t['tokens_seen']:,} tokens" if "problems_seen" in t else "n/a"
        training.append(f"| {role} | {report['test'][role]['parameters']:,} | {a['hidden_size']} / {a['num_hidden_layers']} / "
                        f"{a['num_attention_heads']} | {t['trained_steps']} of {t['schedule_steps']} | {t['batch_size']} | {t['lr']} "
                        f"| {data} | {t['seed']} | {t['threads']} | {t.get('train_seconds', 'n/a')} |")
    measured = [f"| {role} | {split} | {m['accuracy']:.3f} | {m['step_accuracy']:.3f} | {_auroc_cell(m['auroc_low_confidence_is_wrong'])} "
                f"| {_auroc_cell(m['auroc_low_token_probability_is_wrong'])} | {m['seconds_per_problem']:.3f} |"
                for role in roles for split in V2_SPLITS if (m := report[split][role])]
    (out / "MODEL_CARD.md").write_text(CARD_TEMPLATE_V2.format(training="\n".join(training), measured="\n".join(measured),
                                                                n=report["problems"], seed=report["seed"]))


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

`stepgraph testbed-models` (defaults reproduce these files; about 40 minutes
on a 2-core CPU for draft and target; `--which mid --mid-stop-at N` for the mid model). All models see the same seeded stream of train-split problems (batch 64,
AdamW, lr 2e-3 with 100 warm-up steps then cosine decay to 10%, weight decay 0.01, gradient
clipping 1.0), loss on the solution tokens only. The draft is stopped part-way through its
schedule (`--draft-stop-at`) so it stays a mediocre reasoner; the mid model likewise
(`--mid-stop-at`), so it sits between the draft and the target, a third tier for K-tier routing
(`stepgraph.testbed.load_tiers(3)`). Head size is 32 for all three (the smallest vLLM's CPU
attention accepts). Each model's `training.json` records its torch thread count.

## Measured

On the first {n} test-split problems, sampling at temperature {temperature}, each model alone
(`stepgraph testbed-models --evaluate-only`). AUROC: how well a low STEER score
(mean max-logit over math tokens) predicts that a step is wrong. Seconds per problem: one full
answer, local transformers backend, this 2-core CPU.

| model | parameters | hidden / layers / heads | steps trained | accuracy | step accuracy | AUROC (wrong step) | s / problem |
|---|---|---|---|---|---|---|---|
{rows}

Raw numbers: `measurements.json`; per-model training summaries: `*/training.json`.
"""


CARD_TEMPLATE_V2 = """# stepgraph testbed models, task v2: draft, mid and target

Qwen2-architecture causal LMs (`Qwen2ForCausalLM`, safetensors, float32) with the task-v2
byte-level BPE tokenizer and Qwen's chat template, trained on GSM8K-easy word problems
(`stepgraph/testbed/wordproblems.py`; the domain is in `stepgraph/testbed/TASK_V2.md`). Each
solution step is checked exactly by `wordproblems.verify_step` given the steps before it.

## Training

`stepgraph testbed-models --task v2 --which ROLE ...`: a seeded stream of
train-split problems in length-bucketed batches, AdamW with 100 warm-up steps then cosine decay to
10% of the peak learning rate, loss on the solution tokens; checkpointed and resumable. Data:
what the run had seen when it was saved.

| model | parameters | hidden / layers / heads | steps trained | batch | lr | data seen | seed | threads | seconds |
|---|---|---|---|---|---|---|---|---|---|
{training}

## Measured

On the first {n} problems (seed {seed}) of the test split (in distribution) and of the heldout
split (sentence forms never seen in training), greedy decoding, each model alone
(`stepgraph testbed-models --task v2 --evaluate-only`). Accuracy: the boxed
answer is right. Step accuracy: the share of generated steps the verifier accepts given the
model's own steps before them. AUROC: how well a low confidence predicts that a step is wrong,
for STEER's score (mean max-logit over math tokens, `features.logit_confidence`) and for the
step's mean token probability. Seconds per problem: batched generation on one CPU thread.

| model | split | accuracy | step accuracy | AUROC STEER | AUROC token probability | s / problem |
|---|---|---|---|---|---|---|
{measured}

Raw numbers: `measurements.json`; per-model training summaries: `*/training.json`.
"""


def main(args: Args) -> None:
    """Train the ``args.which`` model(s) (unless ``args.evaluate_only``), then measure the models and write their card."""
    torch.set_num_threads(args.threads)
    if not args.evaluate_only:
        steps = {"draft": args.steps_draft, "mid": args.steps_mid, "target": args.steps_target}
        for which in ("draft", "mid", "target"):
            if args.which == which or (args.which == "both" and which != "mid"):
                train(which, steps[which], args)
    roles = {role: args.out / role for role in ROLES if (args.out / role / "config.json").exists()}
    # v1 measures after training once draft and target exist; v2 (three tiers trained separately) on --evaluate-only.
    if (args.task == "v1" and not {"draft", "target"} <= roles.keys()) or (args.task == "v2" and not args.evaluate_only):
        return
    if not roles:
        raise SystemExit(f"No tier to measure: none of {', '.join(ROLES)} in {args.out} has a config.json; train one or pass --out.")
    report = measure_models(roles, n_problems=args.eval_problems, seed=args.seed, task_name=args.task)
    (args.out / "measurements.json").write_text(json.dumps(report, indent=2) + "\n")
    (write_card if args.task == "v1" else write_card_v2)(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":  # the old path of `stepgraph testbed-models`
    from stepgraph.cli import run_old_path
    run_old_path(__spec__.name, "testbed-models")
