"""Prompt Decision Transformer with per-task parameter masks, batched over tasks.

Every tensor entering :meth:`DecisionTransformer.forward` is grouped by task: leading dims
``(N, B)`` = (tasks, sequences per task). Row ``i`` of the mask set belongs to group ``i``,
so all tasks run through one forward pass, each with its own effective weights, and the
linear layers become one batched matmul over tasks (``baddbmm``).

Architecture (HarmoDT defaults, ``configs/model/*.gin`` cite the sources): GPT-style
causal transformer over (return-to-go, state, action) tokens, no positional embedding,
a timestep embedding, a K'-step prompt with its own embeddings prefixed to the K-step
context, layer norm on the main tokens only, ReLU MLP, tanh action head. ``mtdt``
replaces the prompt by one learned task-ID token.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import gin
import torch
import torch.nn.functional as F
from torch import nn

from mtrl_bench.suites import ACTION_DIM, OBS_DIM
from mtrl_bench.training.masking import MaskSegment, MaterializedMasks, TaskMasks, build_segments

#: what a masked layer reads: the masks, or every task's weights materialised from them
LayerMasks = TaskMasks | MaterializedMasks


@gin.configurable
@dataclass
class PromptDTConfig:
    state_dim: int = OBS_DIM
    act_dim: int = ACTION_DIM
    n_layer: int = 6
    n_embd: int = 256
    n_head: int = 8
    n_inner: int = 1024
    dropout: float = 0.1
    context_len: int = 20  # K
    prompt_len: int = 5  # K'
    max_timestep: int = 1000
    #: "prompt" (Prompt-DT), "task_id" (MTDT) or "prompt-film" (Prompt-DT with a per-task
    #: scale and shift after every block's layer norms: the task-film control)
    conditioning: str = "prompt"
    num_tasks: int = 1  # size of the task-ID table when conditioning == "task_id"
    mask_layer_norms: bool = True  # layer norms inside blocks are maskable (HarmoDT)

    def __post_init__(self):
        for name in ("state_dim", "act_dim", "n_layer", "n_embd", "n_head", "n_inner",
                     "context_len", "prompt_len", "max_timestep", "num_tasks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, not "
                             f"{self.conditioning!r}")

    @property
    def prompted(self) -> bool:
        """Whether the model reads a prompt (every conditioning but MTDT's task ID)."""
        return self.conditioning != "task_id"


CONDITIONINGS = ("prompt", "task_id", "prompt-film")


class MaskableLinear(nn.Linear):
    """nn.Linear whose weights may differ per task group (leading dim N of the input)."""

    seg_weight: int | None = None  # index into DecisionTransformer.mask_segments; None = not masked
    seg_bias: int | None = None

    def forward(self, x: torch.Tensor, masks: LayerMasks | None = None) -> torch.Tensor:
        if masks is None or self.seg_weight is None:
            return F.linear(x, self.weight, self.bias)
        n = x.shape[0]
        w = masks.effective(self.seg_weight, self.weight)  # (N, out, in)
        b = masks.effective(self.seg_bias, self.bias)  # (N, out)
        out = torch.baddbmm(b.unsqueeze(1), x.reshape(n, -1, x.shape[-1]), w.transpose(1, 2))
        return out.reshape(*x.shape[:-1], self.out_features)


class MaskableLayerNorm(nn.LayerNorm):
    seg_weight: int | None = None
    seg_bias: int | None = None

    def forward(self, x: torch.Tensor, masks: LayerMasks | None = None) -> torch.Tensor:
        if masks is None or self.seg_weight is None:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        n = x.shape[0]
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        shape = (n,) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        w = masks.effective(self.seg_weight, self.weight).view(shape)
        b = masks.effective(self.seg_bias, self.bias).view(shape)
        return y * w + b


class Block(nn.Module):
    """Pre-LN GPT-2 block (causal self-attention + ReLU MLP) with maskable parameters."""

    #: attention written out op by op instead of the fused kernel (see
    #: :meth:`DecisionTransformer.explicit_attention`)
    explicit_attention = False

    def __init__(self, cfg: PromptDTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.ln_1 = MaskableLayerNorm(cfg.n_embd)
        self.attn_qkv = MaskableLinear(cfg.n_embd, 3 * cfg.n_embd)
        self.attn_proj = MaskableLinear(cfg.n_embd, cfg.n_embd)
        self.ln_2 = MaskableLayerNorm(cfg.n_embd)
        self.mlp_fc = MaskableLinear(cfg.n_embd, cfg.n_inner)
        self.mlp_proj = MaskableLinear(cfg.n_inner, cfg.n_embd)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x, attn_bias, masks: LayerMasks | None, query: int | None = None,
                film: torch.Tensor | None = None):
        """x: (N, B, L, d); attn_bias: (N*B, 1, L, L) additive (0 / -inf). With ``query``,
        only that position's output is computed, (N, B, 1, d): keys and values still come
        from every position (what acting needs from the last block). ``film``: (N, 2, 2, d)
        per-task (scale - 1, shift) after ln_1 and ln_2."""
        n, b, length, d = x.shape
        qkv = self.attn_qkv(_modulate(self.ln_1(x, masks), film, 0), masks)
        q, k, v = qkv.view(n * b, length, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        if query is not None:
            q, attn_bias, x = (q[:, :, query:query + 1], attn_bias[:, :, query:query + 1],
                               x[:, :, query:query + 1])
            length = 1
        dropout = self.dropout if self.training else 0.0
        if self.explicit_attention:  # the same maths, op by op (torch.func.vmap needs it)
            scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5) + attn_bias.to(q.dtype)
            weights = F.dropout(torch.softmax(scores, dim=-1), dropout, self.training)
            y = weights.to(v.dtype) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype),
                                               dropout_p=dropout)
        y = y.transpose(1, 2).reshape(n, b, length, d)
        x = x + self.resid_drop(self.attn_proj(y, masks))
        h = F.relu(self.mlp_fc(_modulate(self.ln_2(x, masks), film, 1), masks))
        return x + self.resid_drop(self.mlp_proj(h, masks))


def _modulate(h: torch.Tensor, film: torch.Tensor | None, which: int) -> torch.Tensor:
    """h * (1 + scale) + shift with the per-task FiLM of layer norm ``which`` (no-op
    without FiLM); h: (N, B, L, d), film: (N, 2, 2, d)."""
    if film is None:
        return h
    scale, shift = film[:, which, 0, None, None], film[:, which, 1, None, None]
    return h * (1 + scale) + shift


class DecisionTransformer(nn.Module):
    """The shared model every method trains (the method ``promptdt`` is this model with no
    masks); conditioned on a prompt, a task-ID token, or a prompt with per-task FiLM in
    every block (``cfg.conditioning``)."""

    def __init__(self, cfg: PromptDTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.n_embd
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d)
        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Linear(cfg.state_dim, d)
        self.embed_action = nn.Linear(cfg.act_dim, d)
        self.embed_ln = nn.LayerNorm(d)
        if cfg.prompted:
            self.prompt_embed_timestep = nn.Embedding(cfg.max_timestep, d)
            self.prompt_embed_return = nn.Linear(1, d)
            self.prompt_embed_state = nn.Linear(cfg.state_dim, d)
            self.prompt_embed_action = nn.Linear(cfg.act_dim, d)
        else:
            self.task_embedding = nn.Embedding(cfg.num_tasks, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.predict_action = nn.Linear(d, cfg.act_dim)
        if cfg.conditioning == "prompt-film":  # zeros: the identity; shared, never masked
            self.task_film = nn.Parameter(torch.zeros(cfg.num_tasks, cfg.n_layer, 2, 2, d))
        self.apply(self._init_weights)
        self.mask_segments = self._register_mask_segments()

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def maskable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters inside the transformer blocks, in a fixed order (found by name)."""
        out = []
        for name, module in self.named_modules():
            if not name.startswith("blocks."):
                continue
            if isinstance(module, MaskableLayerNorm) and not self.cfg.mask_layer_norms:
                continue
            if isinstance(module, (MaskableLinear, MaskableLayerNorm)):
                out += [(f"{name}.weight", module.weight), (f"{name}.bias", module.bias)]
        return out

    def _register_mask_segments(self) -> list[MaskSegment]:
        named = self.maskable_parameters()
        index = {name: i for i, (name, _) in enumerate(named)}
        for name, module in self.named_modules():
            if f"{name}.weight" in index:
                module.seg_weight = index[f"{name}.weight"]
                module.seg_bias = index[f"{name}.bias"]
        return build_segments(named)

    @contextlib.contextmanager
    def explicit_attention(self):
        """Attention op by op while inside: the fused kernel (scaled_dot_product_attention)
        has no torch.func.vmap rule with dropout under bf16 autocast."""
        for block in self.blocks:
            block.explicit_attention = True
        try:
            yield
        finally:
            for block in self.blocks:
                block.explicit_attention = False

    @property
    def num_maskable(self) -> int:
        return self.mask_segments[-1].stop

    def maskable_flat(self) -> torch.Tensor:
        """theta restricted to maskable entries, flattened in mask-row order (a copy)."""
        return torch.cat([p.detach().reshape(-1) for _, p in self.maskable_parameters()])

    def _tokens(self, states, actions, rtg, timesteps, prompt_embeds: bool):
        e = (self.prompt_embed_state, self.prompt_embed_action, self.prompt_embed_return,
             self.prompt_embed_timestep) if prompt_embeds else (
            self.embed_state, self.embed_action, self.embed_return, self.embed_timestep)
        time = e[3](timesteps.clamp(0, self.cfg.max_timestep - 1))
        toks = torch.stack((e[2](rtg) + time, e[0](states) + time, e[1](actions) + time), dim=-2)
        return toks.flatten(-3, -2)  # (N, B, 3T, d) in (R, s, a) order

    def forward(
        self,
        states: torch.Tensor,  # (N, B, K, state_dim)
        actions: torch.Tensor,  # (N, B, K, act_dim)
        returns_to_go: torch.Tensor,  # (N, B, K, 1), already scaled
        timesteps: torch.Tensor,  # (N, B, K) long
        attention_mask: torch.Tensor,  # (N, B, K) 1 = real step, 0 = padding
        prompt: dict[str, torch.Tensor] | None = None,  # same keys with K' steps
        task_ids: torch.Tensor | None = None,  # (N,) long, for task_id conditioning
        masks: TaskMasks | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Predicted actions (N, B, K, act_dim) read from the state tokens; with
        ``last_only`` only the last step's, (N, B, 1, act_dim), which is all acting needs:
        the last block then computes one query per sequence instead of all of them."""
        n, b, k, _ = states.shape
        if masks is not None:  # every task's masked weights of every block, built at once
            masks = masks.materialize([p for _, p in self.maskable_parameters()])
        main = self.embed_ln(self._tokens(states, actions, returns_to_go, timesteps, False))
        key_mask = attention_mask.repeat_interleave(3, dim=-1)
        if self.cfg.prompted:
            if prompt is None:
                raise ValueError("Prompt-DT conditioning needs a prompt")
            p = {key: value.expand(n, b, *value.shape[2:]) for key, value in prompt.items()}
            pre = self._tokens(p["states"], p["actions"], p["returns_to_go"], p["timesteps"], True)
            pre_mask = p["attention_mask"].repeat_interleave(3, dim=-1)
        else:
            if task_ids is None:
                raise ValueError("task-ID conditioning needs task_ids")
            pre = self.task_embedding(task_ids).view(n, 1, 1, -1).expand(n, b, 1, -1)
            pre_mask = torch.ones(n, b, 1, dtype=attention_mask.dtype, device=states.device)
        x = self.drop(torch.cat((pre, main), dim=2))
        key_mask = torch.cat((pre_mask, key_mask), dim=2)
        length = x.shape[2]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        allowed = causal & key_mask.reshape(n * b, 1, 1, length).bool()
        # a fully padded query row would give NaN: let it attend to itself
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=x.device)
        attn_bias = torch.zeros(allowed.shape, dtype=torch.float32, device=x.device).masked_fill(
            ~allowed, -math.inf)  # out of place: the model also runs under torch.func.vmap
        film = self.task_film[task_ids] if self.cfg.conditioning == "prompt-film" else None
        films = [None if film is None else film[:, i] for i in range(len(self.blocks))]
        if last_only:  # the state token of the last step: second to last of the sequence
            for block, layer_film in zip(self.blocks[:-1], films):
                x = block(x, attn_bias, masks, film=layer_film)
            state_hidden = self.ln_f(self.blocks[-1](x, attn_bias, masks, query=length - 2,
                                                     film=films[-1]))
            return torch.tanh(self.predict_action(state_hidden))
        for block, layer_film in zip(self.blocks, films):
            x = block(x, attn_bias, masks, film=layer_film)
        x = self.ln_f(x[:, :, pre.shape[2]:])
        state_hidden = x.view(n, b, k, 3, -1)[:, :, :, 1]
        return torch.tanh(self.predict_action(state_hidden))
