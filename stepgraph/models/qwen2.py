"""Qwen2 checkpoints without importing transformers: the fast path of ``TransformersStepModel``.

Importing transformers reads the source of its whole model zoo (about 3,000 files) before any
model loads, seconds on a small CPU, longer than running the shipped testbed pair. A plain
Qwen2 checkpoint (the testbed pair, Qwen2.5 and Qwen2.5-Math) is a short torch computation over
its safetensors weights, with its ``tokenizer.json`` read by ``tokenizers`` and its chat
template rendered by Jinja the way transformers renders it. Anything else (another
architecture, scaled RoPE, sliding-window attention, a tokenizer without ``tokenizer.json``)
makes ``load`` return None and goes through transformers. Tests check the logits and prompts
against transformers'.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def is_plain_qwen2(path: Path, config: dict[str, Any]) -> bool:
    """Whether the directory holds a Qwen2 checkpoint this module computes exactly as transformers does."""
    rope = config.get("rope_parameters") or {}
    layer_types = config.get("layer_types") or ["full_attention"]
    return (
        config.get("model_type") == "qwen2"
        and config.get("architectures", ["Qwen2ForCausalLM"]) == ["Qwen2ForCausalLM"]
        and config.get("hidden_act", "silu") == "silu"
        and not config.get("use_sliding_window", False)
        and config.get("rope_scaling") is None
        and rope.get("rope_type", "default") == "default"
        and set(layer_types) == {"full_attention"}
        and (path / "tokenizer.json").is_file()
        and (path / "tokenizer_config.json").is_file()
    )


@dataclass
class Qwen2Config:
    vocab_size: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    eps: float
    tie_embeddings: bool
    max_length: int
    eos_token_id: Any

    @classmethod
    def from_json(cls, config: dict[str, Any]) -> Qwen2Config:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        rope = config.get("rope_parameters") or {}
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
            eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_length=int(config.get("max_position_embeddings", 2048)),
            eos_token_id=config.get("eos_token_id"),
        )

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor a Qwen2ForCausalLM checkpoint of this config holds, with its shape."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h), "model.norm.weight": (h,)}
        for i in range(self.layers):
            p = f"model.layers.{i}."
            shapes |= {
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h), p + "self_attn.q_proj.bias": (q,),
                p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
                p + "self_attn.o_proj.weight": (h, q),
                p + "mlp.gate_proj.weight": (self.intermediate, h),
                p + "mlp.up_proj.weight": (self.intermediate, h),
                p + "mlp.down_proj.weight": (h, self.intermediate),
            }
        if not self.tie_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes


class KVCache:
    """Keys and values per layer, ``[kv_heads, tokens, head_dim]``; grown by concatenation, so a
    copy made by ``copy.deepcopy`` and cut back with ``crop`` never touches the original."""

    def __init__(self, layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def get_seq_length(self) -> int:
        k = self.keys[0]
        return 0 if k is None else int(k.shape[1])

    def crop(self, count: int) -> None:
        """Remove ``-count`` tokens from the end (the sign convention of transformers' caches)."""
        keep = self.get_seq_length() + count
        self.keys = [None if k is None else k[:, :keep] for k in self.keys]
        self.values = [None if v is None else v[:, :keep] for v in self.values]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        old_k, old_v = self.keys[layer], self.values[layer]
        self.keys[layer] = k if old_k is None else torch.cat([old_k, k], dim=1)
        self.values[layer] = v if old_v is None else torch.cat([old_v, v], dim=1)
        return self.keys[layer], self.values[layer]  # type: ignore[return-value]


class Qwen2:
    """A Qwen2ForCausalLM forward pass over safetensors weights (eval only, batch of one)."""

    def __init__(self, config: Qwen2Config, weights: dict[str, torch.Tensor]) -> None:
        self.config = config
        self.w = weights
        self.lm_head = weights.get("model.embed_tokens.weight" if config.tie_embeddings else "lm_head.weight")
        self.n_params = sum(t.numel() for name, t in weights.items() if name != "lm_head.weight" or not config.tie_embeddings)
        self.num_embeddings = config.vocab_size
        self.max_length = config.max_length
        self.eos_token_ids = list(config.eos_token_id) if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        dim = config.head_dim
        self.inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))

    def new_cache(self) -> KVCache:
        return KVCache(self.config.layers)

    def logits(self, ids: Sequence[int], cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``[len(ids), vocab]`` of the tokens ``ids`` following what ``cache`` holds (which grows)."""
        return F.linear(self.hidden_states(ids, cache), self.lm_head).float()  # type: ignore[arg-type]

    def hidden_states(self, ids: Sequence[int], cache: KVCache | None = None) -> torch.Tensor:
        """The final-norm hidden states ``[len(ids), hidden]`` that the LM head reads (RADAR embeds questions with them)."""
        c, w = self.config, self.w
        cache = cache or self.new_cache()
        past, n = cache.get_seq_length(), len(ids)
        x = w["model.embed_tokens.weight"][torch.tensor(ids)]
        positions = torch.arange(past, past + n, dtype=torch.float)
        freqs = positions[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        mask = None if n == 1 else torch.ones(n, past + n, dtype=torch.bool).tril(diagonal=past)
        for i in range(c.layers):
            p = f"model.layers.{i}."
            h = _rms_norm(x, w[p + "input_layernorm.weight"], c.eps)
            q = F.linear(h, w[p + "self_attn.q_proj.weight"], w[p + "self_attn.q_proj.bias"]).view(n, c.heads, c.head_dim).transpose(0, 1)
            k = F.linear(h, w[p + "self_attn.k_proj.weight"], w[p + "self_attn.k_proj.bias"]).view(n, c.kv_heads, c.head_dim).transpose(0, 1)
            v = F.linear(h, w[p + "self_attn.v_proj.weight"], w[p + "self_attn.v_proj.bias"]).view(n, c.kv_heads, c.head_dim).transpose(0, 1)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            k, v = cache.append(i, k, v)
            groups = c.heads // c.kv_heads
            k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
            attn = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=1 / math.sqrt(c.head_dim))[0]
            x = x + F.linear(attn.transpose(0, 1).reshape(n, -1), w[p + "self_attn.o_proj.weight"])
            h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], c.eps)
            gate, up = F.linear(h, w[p + "mlp.gate_proj.weight"]), F.linear(h, w[p + "mlp.up_proj.weight"])
            x = x + F.linear(F.silu(gate) * up, w[p + "mlp.down_proj.weight"])
        return _rms_norm(x, w["model.norm.weight"], c.eps)


def load(path: Path, dtype: torch.dtype) -> tuple[Qwen2, dict[str, list[str]]]:
    """The Qwen2 model in ``path`` and a load report shaped like transformers' ``output_loading_info``
    (missing, unexpected and mismatched tensors); the caller refuses a report that is not empty."""
    from safetensors.torch import load_file

    config = Qwen2Config.from_json(json.loads((path / "config.json").read_text()))
    expected = config.tensor_shapes()
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        weights |= load_file(file)
    if config.tie_embeddings:
        weights.pop("lm_head.weight", None)  # tied: transformers ignores a stored copy too
    found = {name: tuple(t.shape) for name, t in weights.items() if not name.endswith("rotary_emb.inv_freq")}
    report = {
        "missing_keys": [k for k in expected if k not in found],
        "unexpected_keys": [k for k in found if k not in expected],
        "mismatched_keys": [k for k in expected if k in found and found[k] != expected[k]],
    }
    if any(report.values()):
        return Qwen2(config, {}), report
    return Qwen2(config, {name: t.to(dtype) for name, t in weights.items() if name in expected}), report


class ChatTokenizer:
    """``tokenizer.json`` through ``tokenizers`` and the chat template through Jinja, with the
    slice of transformers' tokenizer interface the step models use."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        settings = json.loads((path / "tokenizer_config.json").read_text())
        jinja = path / "chat_template.jinja"
        self.chat_template: str | None = jinja.read_text() if jinja.is_file() else settings.get("chat_template")
        self.special_tokens = {
            key: _token_text(settings.get(key)) for key in ("bos_token", "eos_token", "pad_token", "unk_token")
        }
        eos = self.special_tokens["eos_token"]
        self.eos_token_id = self._tok.token_to_id(eos) if eos else None
        self._template: Any = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def __len__(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def get_vocab(self) -> dict[str, int]:
        return dict(self._tok.get_vocab(with_added_tokens=True))

    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        """Render as transformers does: a sandboxed Jinja environment with trimmed blocks, loop
        controls, ``tojson`` and ``raise_exception``, the special tokens as variables."""
        if self.chat_template is None:
            raise ValueError("The tokenizer has no chat template (chat_template.jinja or tokenizer_config.json).")
        if self._template is None:
            self._template = _compile(self.chat_template)
        return str(self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.special_tokens))


def _compile(source: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def _token_text(token: object) -> str | None:
    if isinstance(token, dict):
        return str(token.get("content"))
    return None if token is None else str(token)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
