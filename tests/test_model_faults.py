"""Broken model directories fail at load with a ModelLoadError naming the file; a model's own
failure while generating is a ModelOutputError naming the model; concurrent runs share the
prefix caches without extra prefill.

Each broken directory is a copy of the shipped draft model with one thing changed.
"""

import json
import shutil
import warnings
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from stepgraph import BadQuestionError, ModelLoadError, ModelOutputError, RouterContext, build_graph
from stepgraph.models.local import TransformersStepModel, check_tier_tokenizers
from stepgraph.routing.gates import AlwaysDraftGate, ConfidenceThresholdGate
from stepgraph.testbed import DRAFT_MODEL_DIR, TARGET_MODEL_DIR
from stepgraph.testbed import testbed_task as shipped_task

QUESTION = shipped_task().generate("test", 1, seed=7)[0].question


def copy_model(tmp_path: Path, src: Path = DRAFT_MODEL_DIR, **config: object) -> Path:
    """A copy of a shipped model with ``config`` merged into its config.json."""
    path = tmp_path / "model"
    shutil.copytree(src, path)
    merged = json.loads((path / "config.json").read_text()) | config
    (path / "config.json").write_text(json.dumps(merged))
    return path


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num_hidden_layers": 6, "layer_types": ["full_attention"] * 6}, r"6 layers.*missing from the weights \(they would be random\): model\.layers\.4\."),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, r"not in the model .*self_attn\.k_proj\.bias"),
        ({"model_type": "bert", "architectures": ["BertLMHeadModel"], "is_decoder": True}, r"model_type 'bert'.*missing"),
        ({"intermediate_size": 64}, r"of another shape .*mlp\.down_proj"),
    ],
    ids=["six-layers-over-four", "llama-config", "bert-config", "narrower-mlp"],
)
def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, config, message):
    path = copy_model(tmp_path, **config)
    with pytest.raises(ModelLoadError, match=message) as err:
        TransformersStepModel(path)
    assert str(path) in str(err.value) and "config.json" in str(err.value)


def test_unreadable_config_is_named(tmp_path):
    path = copy_model(tmp_path)
    config = json.loads((path / "config.json").read_text())
    del config["hidden_size"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"check config\.json\): KeyError: 'hidden_size'"):
        TransformersStepModel(path)
    (path / "config.json").write_text("[1]")
    with pytest.raises(ModelLoadError, match=r"config\.json must hold a JSON object, not list"):
        TransformersStepModel(path)


def test_missing_tokenizer_file_is_named(tmp_path):
    path = copy_model(tmp_path)
    (path / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no tokenizer file \(tokenizer\.json"):
        TransformersStepModel(path)


def test_truncated_weights_are_named(tmp_path):
    path = copy_model(tmp_path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is truncated or corrupted"):
        TransformersStepModel(path)


def test_missing_weights_are_named(tmp_path):
    path = copy_model(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no safetensors weights"):
        TransformersStepModel(path)


def test_tokenizer_with_ids_past_the_embedding_is_refused(tmp_path):
    """Weights and config agree on 300 rows, but the tokenizer (the shipped one, larger) is from another model."""
    top = len(TransformersStepModel(DRAFT_MODEL_DIR).tokenizer) - 1
    assert top >= 300  # the shipped tokenizer has ids past the cut embedding
    path = copy_model(tmp_path, vocab_size=300)
    weights = load_file(path / "model.safetensors")
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"][:300].contiguous()
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=rf"token id {top}, but the model's embedding has 300 rows"):
        TransformersStepModel(path)


def test_broken_chat_template_fails_at_load_naming_the_file(tmp_path):
    path = copy_model(tmp_path)
    (path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    with pytest.raises(ModelLoadError, match=r"chat_template\.jinja\) does not render"):
        TransformersStepModel(path)


def test_tiers_sharing_a_format_but_not_a_vocabulary_are_warned_about(tmp_path):
    path = copy_model(tmp_path, src=TARGET_MODEL_DIR)
    tok = json.loads((path / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]  # digits swapped: the model now reads 1 as 2
    (path / "tokenizer.json").write_text(json.dumps(tok))
    draft, target, swapped = (TransformersStepModel(p) for p in (DRAFT_MODEL_DIR, TARGET_MODEL_DIR, path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_tier_tokenizers([draft, target])  # the shipped pair shares its tokenizer: no warning
    with pytest.warns(UserWarning, match=r"share a chat template .*\['2', '1'\]") as record:
        check_tier_tokenizers([draft, swapped])
    assert str(path) in str(record[0].message)


def test_a_models_own_error_is_attributed_to_the_model():
    draft, target = TransformersStepModel(DRAFT_MODEL_DIR), TransformersStepModel(TARGET_MODEL_DIR)

    def broken_forward(*args, **kwargs):
        raise ValueError("rotary embedding got an unexpected shape")

    draft.model.logits = broken_forward
    graph = build_graph([draft, target], AlwaysDraftGate())
    with pytest.raises(ModelOutputError, match=r"draft \(.*draft\) failed while generating a step: ValueError: rotary") as err:
        graph.invoke({"question": QUESTION})
    assert not isinstance(err.value, BadQuestionError)


def test_concurrent_runs_cost_no_more_prefill_than_sequential_ones():
    """graph.batch interleaves runs on each model; each run still finds its own prefix cached."""
    questions = [{"question": p.question} for p in shipped_task().generate("test", 8, seed=3)]
    context = RouterContext(seed=0, temperature=0)

    def fresh_graph(gate):
        return build_graph([TransformersStepModel(DRAFT_MODEL_DIR), TransformersStepModel(TARGET_MODEL_DIR)], gate)

    # The median of the draft's own step confidences: the gate escalates some steps (and keeps others),
    # so both tiers' caches interleave, whatever the shipped draft's confidence scale.
    drafted = [fresh_graph(AlwaysDraftGate()).invoke(q, context=context) for q in questions]
    confidences = sorted(s["observation"]["logit_confidence"] for r in drafted for s in r["steps"])
    gate = ConfidenceThresholdGate(confidences[len(confidences) // 2])

    graph = fresh_graph(gate)
    sequential = [graph.invoke(q, context=context) for q in questions]
    batched = fresh_graph(gate).batch(questions, {"max_concurrency": 8}, context=context)
    assert [[s["text"] for s in r["steps"]] for r in batched] == [[s["text"] for s in r["steps"]] for r in sequential]
    assert any(r["escalations"] for r in sequential)
    seq_prefill = sum(r["totals"]["prefill_flops"] for r in sequential)
    batch_prefill = sum(r["totals"]["prefill_flops"] for r in batched)
    assert batch_prefill <= 1.03 * seq_prefill


def test_cache_slots_is_validated():
    with pytest.raises(ValueError, match="cache_slots must be an integer >= 1"):
        TransformersStepModel(DRAFT_MODEL_DIR, cache_slots=0)


@pytest.mark.parametrize("model_dir", [DRAFT_MODEL_DIR, TARGET_MODEL_DIR], ids=["draft", "target"])
def test_fast_qwen2_path_computes_what_transformers_computes(model_dir):
    """The shipped pair loads without transformers; its prompts, token ids and logits are transformers'."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepgraph.models import qwen2

    fast = TransformersStepModel(model_dir, system_prompt="Reason step by step.")
    assert isinstance(fast.model, qwen2.Qwen2) and isinstance(fast.tokenizer, qwen2.ChatTokenizer)
    tokenizer, reference = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    messages = [{"role": "system", "content": "Reason step by step."}, {"role": "user", "content": QUESTION}]
    prompt = fast.prompt(QUESTION, ["3+2=5"])
    assert prompt == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "3+2=5\n\n"
    ids = fast.tokenizer(prompt)["input_ids"]
    assert ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert fast.n_params == sum(p.numel() for p in reference.parameters())
    with torch.inference_mode():
        expected = reference(input_ids=torch.tensor([ids])).logits[0]
        cache = fast.model.new_cache()  # in three pieces, as the prefix cache feeds it
        pieces = [fast.model.logits(ids[:-5], cache), fast.model.logits(ids[-5:-1], cache), fast.model.logits(ids[-1:], cache)]
    assert torch.allclose(torch.cat(pieces), expected, atol=1e-4)


def test_qwen2_outside_the_fast_paths_scope_loads_through_transformers(tmp_path):
    path = copy_model(tmp_path, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    model = TransformersStepModel(path)
    assert type(model.model).__name__ == "_Transformers"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the cache goes by the name this transformers takes
        assert model.generate_step(QUESTION, [], seed=0).generated_tokens > 0


def test_solving_on_the_shipped_tiers_does_not_import_transformers():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from stepgraph import build_graph, load_tiers, resolve_gate\n"
        f"result = build_graph(load_tiers(), resolve_gate()).invoke({{'question': {QUESTION!r}}})\n"
        "print(result['stop_reason'], 'transformers' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.stdout.split() == ["final_answer", "False"], result.stderr
    assert result.stderr == ""  # and prints no warnings
