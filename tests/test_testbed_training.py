"""The tier training script on task v2: length-bucketed batches and exact checkpoint/resume."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from stepgraph.training import testbed_models as tm
from transformers import AutoTokenizer

from stepgraph.testbed import wordproblems
from stepgraph.testbed.tokenizer import VOCAB_SIZE, VOCAB_SIZE_V2

TINY = {"task": "v2", "which": "draft", "steps_draft": 6, "batch_size": 4, "chunk_problems": 64, "threads": 1}


def _weights(path):
    return load_file(str(path / "draft" / "model.safetensors"))


def test_resume_continues_bit_for_bit(tmp_path):
    straight = tm.Args(**TINY, draft_stop_at=None, out=tmp_path / "straight")  # type: ignore[arg-type]
    tm.train("draft", 6, straight)
    first = tm.Args(**TINY, draft_stop_at=3, checkpoint_every=3, out=tmp_path / "resumed")  # type: ignore[arg-type]
    tm.train("draft", 6, first)
    checkpoint = torch.load(tmp_path / "resumed" / "draft-checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3 and checkpoint["position"] == [0, 3]
    assert not list((tmp_path / "resumed").glob("*.tmp"))  # written atomically
    second = tm.Args(**TINY, draft_stop_at=None, checkpoint_every=3, resume=True, out=tmp_path / "resumed")  # type: ignore[arg-type]
    tm.train("draft", 6, second)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "resumed" / "draft" / "training.json").read_text())
    assert summary == {**json.loads((tmp_path / "straight" / "draft" / "training.json").read_text()),
                       "train_seconds": summary["train_seconds"]}
    assert summary["tokens_seen"] > 0 and summary["problems_seen"] == 24 and summary["seed"] == 0 and summary["threads"] == 1


def test_a_tier_can_reuse_a_saved_tokenizer(tmp_path):
    tm.tokenizer_for("v1").save_pretrained(tmp_path / "tok")  # not the one v2 would build
    tm.train("draft", 2, tm.Args(**TINY, tokenizer=tmp_path / "tok", out=tmp_path))  # type: ignore[arg-type]
    assert (tmp_path / "draft" / "tokenizer.json").read_text() == (tmp_path / "tok" / "tokenizer.json").read_text()
    assert json.loads((tmp_path / "draft" / "config.json").read_text())["vocab_size"] == VOCAB_SIZE


def test_resume_refuses_a_missing_or_mismatched_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume"):
        tm.train("draft", 6, tm.Args(**TINY, resume=True, out=tmp_path))  # type: ignore[arg-type]
    tm.train("draft", 6, tm.Args(**TINY, draft_stop_at=2, checkpoint_every=2, out=tmp_path))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="other settings"):
        tm.train("draft", 6, tm.Args(**{**TINY, "batch_size": 8}, resume=True, out=tmp_path))  # type: ignore[arg-type]


def test_v2_batches_are_length_bucketed_and_resumable():
    tokenizer = tm.tokenizer_for("v2")
    stream = tm.batches(tokenizer, 8, 0, "v2", (0, 0), 256)
    taken = [next(stream) for _ in range(40)]  # past the first chunk's 32 batches
    assert [position for position, _, _ in taken[30:34]] == [(0, 30), (0, 31), (1, 0), (1, 1)]
    padding = sum(int((ids == tokenizer.pad_token_id).sum()) for _, ids, _ in taken)
    assert padding / sum(ids.numel() for _, ids, _ in taken) < 0.05
    position, ids, labels = next(tm.batches(tokenizer, 8, 0, "v2", (1, 1), 256))
    assert position == (1, 1) and torch.equal(ids, taken[33][1]) and torch.equal(labels, taken[33][2])


def test_v2_architectures_fit_vllm_and_the_size_budget():
    tokenizer = tm.tokenizer_for("v2")
    sizes = {}
    for role, arch in tm.ARCHITECTURES_V2.items():
        head = arch["hidden_size"] // arch["num_attention_heads"]
        assert head in (32, 64) or head >= 80
        sizes[role] = sum(p.numel() for p in tm.build_model(role, len(tokenizer), tokenizer, "v2").parameters())
    assert sizes["target"] >= 8 * sizes["draft"] and sizes["draft"] < sizes["mid"] < sizes["target"]
    assert sum(sizes.values()) * 4 <= 60e6  # float32


def _pieces_per_word(tokenizer, split: str) -> float:
    words = [w for p in wordproblems.generate(split, 200, seed=3) for w in re.findall(r"[A-Za-z']+", p.question)]
    return sum(len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words) / len(words)


def test_v2_tokenizer_keeps_words_whole_digits_single_and_the_qwen2_format(tmp_path):
    tokenizer = tm.tokenizer_for("v2")
    assert len(tokenizer) == VOCAB_SIZE_V2 and len(tm.tokenizer_for("v1")) == VOCAB_SIZE  # the shipped one is unchanged
    assert _pieces_per_word(tokenizer, "test") < 1.1
    assert _pieces_per_word(tokenizer, "heldout") < 1.1  # held-out forms reuse training's words
    assert tokenizer.tokenize(" 2026") == ["Ġ", "2", "0", "2", "6"]
    text = "Zyx quibbles 7 florps."  # unseen words still tokenize and round-trip
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    tokenizer.save_pretrained(tmp_path)  # as in a model directory: vLLM and AutoTokenizer read the Qwen2 config
    tm.build_model("draft", len(tokenizer), tokenizer, "v2").config.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ in ("Qwen2Tokenizer", "Qwen2TokenizerFast") and loaded.tokenize(text) == tokenizer.tokenize(text)
    prompt = loaded.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_the_prompt_loss_reads_the_question_tokens_only():
    import math

    import torch
    from stepgraph.training.testbed_models import prompt_loss

    vocab = 7
    input_ids = torch.tensor([[1, 2, 3, 4, 5, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 4, 5, -100, -100]])  # the solution starts at position 3
    mask = (input_ids != 0).long()
    logits = torch.zeros(1, 7, vocab)
    assert math.isclose(prompt_loss(logits, input_ids, labels, mask).item(), math.log(vocab), rel_tol=1e-6)
    logits[0, 0, 2] = logits[0, 1, 3] = 50.0  # the model predicts the two question tokens after the first
    assert prompt_loss(logits, input_ids, labels, mask).item() < 1e-6
    logits[0, 3, 1] = logits[0, 5, 1] = 50.0  # wrong guesses on solution and padding positions change nothing
    assert prompt_loss(logits, input_ids, labels, mask).item() < 1e-6


def test_v2_evaluate_only_writes_the_card_per_tier_and_split(tmp_path, monkeypatch):
    tm.train("draft", 4, tm.Args(**TINY, draft_stop_at=2, checkpoint_every=2, out=tmp_path))  # type: ignore[arg-type]
    # A run still training is measured from its checkpoint, exported as a model directory.
    exported = tm.export_checkpoint(tmp_path, "draft", tmp_path / "snapshot" / "draft")
    state = torch.load(tmp_path / "draft-checkpoint.pt", weights_only=True)
    weights = load_file(str(exported / "model.safetensors"))
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)
    summary = json.loads((exported / "training.json").read_text())
    assert summary["trained_steps"] == 2 and summary["problems_seen"] == 8 and summary["threads"] == 1
    tm.main(tm.Args(task="v2", evaluate_only=True, eval_problems=3, threads=1, out=tmp_path / "snapshot"))
    report = json.loads((tmp_path / "snapshot" / "measurements.json").read_text())
    assert report["decoding"] == "greedy" and set(report) >= {"test", "heldout"}
    for split in ("test", "heldout"):
        m = report[split]["draft"]
        assert m["problems"] == 3 and 0 <= m["accuracy"] <= m["step_accuracy"] + 1 and m["parameters"] == summary["parameters"]
    card = (tmp_path / "snapshot" / "MODEL_CARD.md").read_text()
    assert "| draft | test |" in card and "| draft | heldout |" in card and "| 2 of 4 | 4 |" in card and "8 problems" in card


def test_testbed_models_command_passes_its_options_to_the_trainer(monkeypatch):
    from stepgraph.cli import main

    ran: list[tm.Args] = []
    monkeypatch.setattr(tm, "main", ran.append)
    assert main(["testbed-models", "--which", "mid", "--mid-stop-at", "1250", "--threads", "1", "--resume"]) == 0
    assert (ran[0].which, ran[0].mid_stop_at, ran[0].threads, ran[0].resume) == ("mid", 1250, 1, True)
    assert ran[0].draft_stop_at is None and ran[0].steps_mid == tm.Args.steps_mid  # the command line's defaults
