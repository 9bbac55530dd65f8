"""Train the demo model: a small Qwen3 (the architecture of Qwen/Qwen3-1.7B-Base, scaled down by
the Qwen3 plugin's stand-in recipe) that learns the facts of :mod:`.facts`.

Why it is fast enough to train at first use on a laptop CPU:

- The prompts share prefixes ("<|endoftext|>Fact: The president of the United States in 19..."),
  so they are run as one **prefix tree**: every distinct prefix is one token of a single sequence
  whose attention mask lets it see its ancestors only and whose RoPE position is its depth. The
  hidden states are exactly those of running each prompt alone, with about 4x fewer tokens.
- The loss is the cross-entropy at the answer position only. The 151,936-row tied embedding is
  trained only on the rows the corpus uses; the other rows stay at their small random init and
  enter the softmax through their exact expected mass: for rows ``e ~ N(0, s^2 I)`` independent
  of the hidden state ``h``, ``E[exp(h.e)] = exp(s^2 |h|^2 / 2)``, so their log-sum-exp is
  ``log(n_rest) + s^2 |h|^2 / 2``.
- The forward pass is plain tensor code (no module overhead), checked against the ``transformers``
  model it is saved as (``check_against_hf``).

Deterministic: fixed seeds, a fixed torch thread count during the build, and
``torch.use_deterministic_algorithms``; the same machine gives the same bytes (another CPU may
round matrix products differently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import facts as F

if TYPE_CHECKING:  # torch and transformers are imported where they are used, not at import
    import torch
    from transformers import PretrainedConfig

MODEL_REPO = "Qwen/Qwen3-1.7B-Base"
N_LAYERS = 4
SEED = 1729
INIT_STD = 0.02  # transformers' initializer_range for Qwen3, used for the untrained rows too


@dataclass
class Recipe:
    """How the model is trained (full-batch Adam, warm-up then cosine decay to 5 %)."""

    n_layers: int = N_LAYERS
    steps: int = 300
    lr: float = 1e-2
    warmup: int = 20
    seed: int = SEED
    # Prompt tokens keep their small random embeddings: the residual stream is then carried by
    # what the MLPs write, which the transcoder's features describe (and ablations remove).
    train_prompt_embeddings: bool = False
    # Layers whose attention writes nothing (o_proj zero, frozen): layer 0's MLP sees each
    # token alone, so the office, country and digit features are per-token features.
    inert_attention: tuple[int, ...] = (0,)


# --- the corpus as a prefix tree ------------------------------------------------------------
@dataclass
class PrefixTree:
    """Distinct prefixes of token sequences, in creation order (a parent before its child)."""

    tokens: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    index: dict[tuple[int, ...], int] = field(default_factory=dict)

    def add(self, ids: list[int]) -> int:
        """Insert ``ids``; the node of its last token."""
        node = -1
        for i in range(len(ids)):
            key = tuple(ids[: i + 1])
            if key not in self.index:
                self.index[key] = len(self.tokens)
                self.tokens.append(ids[i])
                self.parent.append(node)
                self.depth.append(i)
            node = self.index[key]
        return node

    def ancestors(self):
        """``(anc, valid)``: ``anc[i, j]`` is node i's ancestor at depth j (itself at its own
        depth), ``valid[i, j]`` whether depth j <= node i's depth (padding repeats node i)."""
        import torch
        n, width = len(self.tokens), max(self.depth) + 1
        anc = torch.arange(n)[:, None].repeat(1, width)
        for i, p in enumerate(self.parent):
            if p >= 0:
                anc[i, : self.depth[i]] = anc[p, : self.depth[i]]
        valid = torch.arange(width)[None] <= torch.tensor(self.depth)[:, None]
        return anc, valid


@dataclass
class Context:
    """Whom each node attends to: ``anc`` (n, width) node indices, ``valid`` (n, width)."""

    anc: torch.Tensor
    valid: torch.Tensor


@dataclass
class Batch:
    """The corpus ready for the forward pass (token ids local to ``vocab``)."""

    vocab: list[int]  # global token ids the model trains; local id = index in this list
    local: torch.Tensor  # (n_nodes,) local token ids
    positions: torch.Tensor  # (n_nodes,) depths
    context: Context  # whom each node attends to
    finals: torch.Tensor  # (n_facts,) node of each fact's last prompt token
    targets: torch.Tensor  # (n_facts, len(vocab) + 1) target distribution (last column: the rest)
    tree: PrefixTree
    facts: list[F.Fact]


def prompt_ids(prompt: str) -> list[int]:
    """What circuit-tracer runs: ``<|endoftext|>`` then the prompt's tokens."""
    return [F.BOS_ID, *F.token_ids(prompt)]


def make_batch(corpus: list[F.Fact]) -> Batch:
    import torch
    tree = PrefixTree()
    finals = [tree.add(prompt_ids(f.prompt)) for f in corpus]
    maybe_answers = [[F.one_token(a) for a in f.targets] for f in corpus]
    answers = [[t for t in ids if t is not None] for ids in maybe_answers]
    if any(len(ids) != len(maybe) for ids, maybe in zip(answers, maybe_answers)):
        raise ValueError("every answer must be one token")
    vocab = sorted(set(tree.tokens) | {t for ids in answers for t in ids})
    local_of = {t: i for i, t in enumerate(vocab)}
    targets = torch.zeros(len(corpus), len(vocab) + 1)
    for row, ids in enumerate(answers):
        targets[row, [local_of[t] for t in ids]] = 1.0 / len(ids)
    return Batch(vocab, torch.tensor([local_of[t] for t in tree.tokens]),
                 torch.tensor(tree.depth), Context(*tree.ancestors()), torch.tensor(finals),
                 targets, tree, corpus)


# --- a Qwen3 forward pass on plain tensors ----------------------------------------------------
def config(n_layers: int = N_LAYERS) -> PretrainedConfig:
    """The ``Qwen3Config``: Qwen/Qwen3-1.7B-Base's architecture flags at stand-in size."""
    import qwen_interp
    from qwen_interp.apps.testing.hub import small_config
    return small_config(qwen_interp.registry().model(MODEL_REPO), n_layers=n_layers)


def init_weights(cfg, seed: int) -> dict:
    """Weights named as in the ``transformers`` checkpoint: normal(0, 0.02) matrices (as
    transformers initialises Qwen3), unit norm gains."""
    import torch
    g = torch.Generator().manual_seed(seed)
    d, dh = cfg.hidden_size, cfg.head_dim
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, d)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (cfg.num_attention_heads * dh, d),
            p + "self_attn.k_proj.weight": (cfg.num_key_value_heads * dh, d),
            p + "self_attn.v_proj.weight": (cfg.num_key_value_heads * dh, d),
            p + "self_attn.o_proj.weight": (d, cfg.num_attention_heads * dh),
            p + "mlp.gate_proj.weight": (cfg.intermediate_size, d),
            p + "mlp.up_proj.weight": (cfg.intermediate_size, d),
            p + "mlp.down_proj.weight": (d, cfg.intermediate_size),
        })
    weights = {name: torch.randn(shape, generator=g) * INIT_STD for name, shape in shapes.items()}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for name, n in (("self_attn.q_norm", dh), ("self_attn.k_norm", dh),
                        ("input_layernorm", d), ("post_attention_layernorm", d)):
            weights[p + name + ".weight"] = torch.ones(n)
    weights["model.norm.weight"] = torch.ones(d)
    return weights


def _rms(x, w, eps):
    import torch
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, positions, theta: float):
    """transformers' rotate-half RoPE; x: (n, heads, head_dim)."""
    import torch
    dh = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh))
    freqs = positions.float()[:, None] * inv_freq[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def forward(w: dict, cfg, embed, positions, context: Context, capture: dict | None = None,
            out=None, inert: tuple[int, ...] = ()):
    """Final hidden states (after the final norm) of nodes with input embeddings ``embed``
    (n, d); node i attends to the nodes ``context.anc[i]`` where ``context.valid[i]``.

    ``out``: only these nodes' final states are wanted (the last layer then runs its queries and
    MLP on them alone). ``inert``: layers whose attention output is known to be zero (o_proj
    zero), skipped. ``capture``, when given, receives per layer ``mlp_in`` (after the pre-MLP
    RMSNorm and its gain), ``mlp_out`` and ``resid_post`` (the decoder layer's output)."""
    import torch
    n, eps = embed.shape[0], cfg.rms_norm_eps
    H, KV, dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    G = H // KV  # query heads per key/value head (transformers' repeat_kv order)
    x = embed
    last = cfg.num_hidden_layers - 1
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        rows = out if (i == last and out is not None) else None
        if i not in inert:
            a = _rms(x, w[p + "input_layernorm.weight"], eps)
            k = _rms((a @ w[p + "self_attn.k_proj.weight"].T).view(n, KV, dh),
                     w[p + "self_attn.k_norm.weight"], eps)
            v = (a @ w[p + "self_attn.v_proj.weight"].T).view(n, KV, dh)
            k = _rope(k, positions, cfg.rope_theta)
            anc, valid, pos = context.anc, context.valid, positions
            if rows is not None:
                a, anc, valid, pos = a[rows], anc[rows], valid[rows], positions[rows]
            m = a.shape[0]
            q = _rms((a @ w[p + "self_attn.q_proj.weight"].T).view(m, H, dh),
                     w[p + "self_attn.q_norm.weight"], eps)
            q = _rope(q, pos, cfg.rope_theta).view(m, KV, G, dh)
            # each node's ancestors' keys and values (index_select: its backward is index_add)
            width = anc.shape[1]
            k_anc = k.index_select(0, anc.reshape(-1)).view(m, width, KV, dh)
            v_anc = v.index_select(0, anc.reshape(-1)).view(m, width, KV, dh)
            scores = torch.einsum("nkgd,njkd->nkgj", q, k_anc) * dh ** -0.5
            probs = scores.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(-1)
            o = torch.einsum("nkgj,njkd->nkgd", probs, v_anc).reshape(m, H * dh)
            x = (x if rows is None else x[rows]) + o @ w[p + "self_attn.o_proj.weight"].T
        elif rows is not None:
            x = x[rows]
        m_in = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = torch.nn.functional.silu(m_in @ w[p + "mlp.gate_proj.weight"].T)
        m_out = (gate * (m_in @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        x = x + m_out
        if capture is not None:
            capture.setdefault("mlp_in", []).append(m_in)
            capture.setdefault("mlp_out", []).append(m_out)
            capture.setdefault("resid_post", []).append(x)
    return _rms(x, w["model.norm.weight"], eps)


def causal_context(n: int) -> Context:
    """The context of one ordinary sequence of n tokens."""
    import torch
    anc = torch.arange(n)[None].repeat(n, 1)
    valid = anc <= torch.arange(n)[:, None]
    return Context(torch.where(valid, anc, torch.arange(n)[:, None]), valid)


def rest_logsumexp(h, n_rest: int):
    """log-sum-exp of the logits of ``n_rest`` untrained rows (normal(0, INIT_STD), see the
    module docstring)."""
    return math.log(n_rest) + 0.5 * INIT_STD ** 2 * h.pow(2).sum(-1)


# --- training --------------------------------------------------------------------------------
@dataclass
class Trained:
    weights: dict  # full checkpoint, float32, already rounded to bf16 values
    batch: Batch
    cfg: PretrainedConfig  # a Qwen3Config (``config``)
    accuracy: float  # argmax over the full vocabulary == answer, over the corpus
    losses: list


def train(recipe: Recipe | None = None, corpus: list[F.Fact] | None = None,
          log=None) -> Trained:
    import torch
    recipe = recipe or Recipe()
    cfg = config(recipe.n_layers)
    batch = make_batch(corpus or F.corpus())
    w = init_weights(cfg, recipe.seed)
    for layer in recipe.inert_attention:
        w[f"model.layers.{layer}.self_attn.o_proj.weight"].zero_()
    frozen = {f"model.layers.{layer}.self_attn.o_proj.weight" for layer in recipe.inert_attention}
    vocab = torch.tensor(batch.vocab)
    full_embed = w.pop("model.embed_tokens.weight")
    params = {k: v.clone().requires_grad_(k not in frozen) for k, v in w.items()}
    params["embed"] = full_embed[vocab].clone().requires_grad_(True)
    answer_ids = {F.one_token(a) for f in batch.facts for a in f.targets}
    trained_rows = torch.tensor([recipe.train_prompt_embeddings or t in answer_ids
                                 for t in batch.vocab])[:, None]
    fixed_rows = full_embed[vocab].clone()
    n_rest = cfg.vocab_size - len(batch.vocab)
    opt = torch.optim.Adam([v for v in params.values() if v.requires_grad], lr=recipe.lr,
                           betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses = []
    for step in range(recipe.steps):
        embed = torch.where(trained_rows, params["embed"], fixed_rows)
        hf = forward(params, cfg, embed[batch.local], batch.positions, batch.context,
                     out=batch.finals, inert=recipe.inert_attention)
        logits = torch.cat([hf @ embed.T, rest_logsumexp(hf, n_rest)[:, None]], -1)
        loss = torch.nn.functional.cross_entropy(logits, batch.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step % 50 == 0 or step == recipe.steps - 1):
            log(f"  step {step:4d}  loss {loss.item():.4f}")
    with torch.no_grad():
        full_embed[vocab] = torch.where(trained_rows, params.pop("embed").detach(), fixed_rows)
        weights = {"model.embed_tokens.weight": full_embed,
                   **{k: v.detach() for k, v in params.items()}}
        weights = {k: v.to(torch.bfloat16).float() for k, v in weights.items()}
    acc = accuracy(weights, cfg, batch)
    return Trained(weights, batch, cfg, acc, losses)


def full_logits(weights: dict, cfg, batch: Batch, capture: dict | None = None):
    """Logits over the whole vocabulary at each fact's answer position."""
    import torch
    with torch.no_grad():
        E = weights["model.embed_tokens.weight"]
        tokens = torch.tensor(batch.tree.tokens)
        h = forward(weights, cfg, E[tokens], batch.positions, batch.context, capture)
        return h[batch.finals] @ E.T


def accuracy(weights: dict, cfg, batch: Batch) -> float:
    """Share of facts whose top prediction over the whole vocabulary is one of its answers."""
    top = full_logits(weights, cfg, batch).argmax(-1).tolist()
    right = [F.tokenizer().decode([t]) in f.targets for t, f in zip(top, batch.facts)]
    return sum(right) / len(right)


# --- saving ----------------------------------------------------------------------------------
def hf_model(weights: dict, cfg):
    """The ``transformers`` model with these weights (float32)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"weights do not fit the config: missing {missing}, "
                           f"unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def check_against_hf(model, weights: dict, cfg, prompt: str = "") -> float:
    """Largest |logit difference| between ``forward`` and the ``transformers`` model on a
    prompt (the seed's by default); the build refuses a model where they disagree."""
    import torch
    from qwen_interp.apps.trace import SEED_PROMPT
    ids = torch.tensor(prompt_ids(prompt or SEED_PROMPT))
    n = len(ids)
    with torch.no_grad():
        E = weights["model.embed_tokens.weight"]
        ours = forward(weights, cfg, E[ids], torch.arange(n), causal_context(n)) @ E.T
        theirs = model(ids[None]).logits[0]
    return (ours - theirs).abs().max().item()
