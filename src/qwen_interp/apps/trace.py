"""The main job: trace a prompt through a CLT with circuit-tracer and summarise the graph.

``run_trace()`` loads the model and transcoder by repo id (``ReplacementModel.from_pretrained``,
as users do), runs ``attribute()``, prints the top nodes and writes the graph files that
circuit-tracer's viewer reads. The built-in default is an offline demo: a small
Qwen3-1.7B-Base-shaped model trained at first use on public records (who led five countries,
1977-2024: ``qwen_interp.apps.demo``) and a CLT trained on its activations, built once under the
real repo ids in a local Hugging Face cache: the seed prompt's graph shows a real circuit
(office, country and year features feeding the answer), at toy scale.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SEED_PROMPT = "Fact: The president of the United States in 2010 was"
DEFAULT_MODEL = "Qwen/Qwen3-1.7B-Base"
DEFAULT_TRANSCODER = "bluelightai/clt-qwen3-1.7b-base-20k"


def demo_hf_home() -> Path:
    from qwen_interp.paths import cache_root
    return cache_root() / "demo-hf"


def use_demo_hub() -> Path:
    """Point the HF libraries at the demo cache, offline. Must run before they are imported."""
    import sys
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("the offline demo must configure HF_HOME before huggingface_hub is "
                           "imported; run it in a fresh process (`qwen-interp trace`)")
    hf_home = demo_hf_home()
    os.environ.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        os.environ.pop(key, None)
    return hf_home


def start_demo(model: str, transcoder: str) -> Path:
    """The offline demo, as the CLI's commands run it: the demo cache, said in one line, and the
    small model and CLT built there once."""
    hf_home = use_demo_hub()
    print(f"offline demo: a small {model} trained on public records (who held which office "
          f"when) and its {transcoder} layout CLT, in {hf_home} (pass --model/--transcoder for "
          "real checkpoints)")
    build_demo(hf_home, model, transcoder)
    return hf_home


def build_demo(hf_home: Path, model: str, transcoder: str) -> None:
    """The trained demo (``qwen_interp.apps.demo.build``): built at first use (about 40 s on a
    2-core CPU), rebuilt when the cache holds another recipe's."""
    from qwen_interp.apps.demo.build import MODEL_REPO, TRANSCODER_REPO, build_trained_demo
    if (model, transcoder) != (MODEL_REPO, TRANSCODER_REPO):
        raise ValueError(f"the offline demo is {MODEL_REPO} with {TRANSCODER_REPO}, not {model} "
                         f"with {transcoder}")
    build_trained_demo(hf_home)


@dataclass
class Node:
    kind: str  # feature | error | token | logit
    layer: int | None
    position: int
    feature: int | None
    influence: float
    label: str


def top_nodes(graph, tokenizer, k: int = 10) -> list[Node]:
    """Nodes ranked by their influence on the logits (circuit-tracer's own influence measure)."""
    import torch
    from circuit_tracer.graph import compute_node_influence
    n_pos = len(graph.input_tokens)
    n_logits = len(graph.logit_targets)
    n_features = len(graph.selected_features)
    n_layers = graph.cfg.n_layers
    weights = torch.zeros(graph.adjacency_matrix.shape[0], device=graph.adjacency_matrix.device)
    weights[-n_logits:] = graph.logit_probabilities
    influence = compute_node_influence(graph.adjacency_matrix, weights)
    tokens = [tokenizer.decode([t]) for t in graph.input_tokens.tolist()]
    nodes = []
    for idx in torch.argsort(influence, descending=True)[: k * 3].tolist():
        if idx < n_features:
            layer, pos, feat = graph.active_features[graph.selected_features[idx]].tolist()
            nodes.append(Node("feature", layer, pos, feat, influence[idx].item(),
                              f"L{layer} feature {feat} on {tokens[pos]!r}"))
        elif idx < n_features + n_layers * n_pos:
            layer, pos = divmod(idx - n_features, n_pos)
            nodes.append(Node("error", layer, pos, None, influence[idx].item(),
                              f"L{layer} error on {tokens[pos]!r}"))
        elif idx < n_features + n_layers * n_pos + n_pos:
            pos = idx - n_features - n_layers * n_pos
            nodes.append(Node("token", None, pos, None, influence[idx].item(),
                              f"embedding of {tokens[pos]!r}"))
    return nodes[:k]


def resolve_device(device: str | None):
    """``--device`` as a torch device, refused up front when this machine does not have it."""
    import torch
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {device}: this machine has no CUDA device "
                             "(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"--device {device}: only {count} CUDA device(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: expected cpu, cuda[:N] or mps")
    return dev


def check_prompt(prompt) -> str:
    """The command line's prompt: not blank, and text a tokenizer can read (``inputs``)."""
    from qwen_interp.inputs import check_prompt as check_text
    if isinstance(prompt, str) and not prompt.strip():
        raise ValueError("the prompt is empty: there is no token to attribute")
    check_text(prompt, "the prompt")
    return prompt


def load_replacement_model(model: str, transcoder: str, backend: str = "transformerlens",
                           device: str | None = None, dtype: str = "float32"):
    """circuit-tracer's ``ReplacementModel`` by repo id, as users load it (adapters armed)."""
    import torch

    import qwen_interp  # noqa: F401 - activates the adapters
    from circuit_tracer import ReplacementModel
    return ReplacementModel.from_pretrained(model, transcoder, backend=backend,
                                            device=resolve_device(device),
                                            dtype=getattr(torch, dtype))


def attribute_prompt(prompt: str, rm, batch_size: int = 256, max_feature_nodes: int = 8192):
    """``attribute()`` with the logit targets every command uses: up to 10 logits covering 95 %
    of the probability."""
    from circuit_tracer import attribute
    return attribute(prompt, rm, max_n_logits=10, desired_logit_prob=0.95,
                     batch_size=batch_size, max_feature_nodes=max_feature_nodes)


def run_trace(model: str = DEFAULT_MODEL, transcoder: str = DEFAULT_TRANSCODER,
              prompt: str = SEED_PROMPT, out_dir: str | Path = "graph_files",
              backend: str = "transformerlens", device: str | None = None,
              dtype: str = "float32", max_feature_nodes: int = 8192, batch_size: int = 256,
              echo=print) -> dict:
    from circuit_tracer.utils.create_graph_files import create_graph_files

    rm = load_replacement_model(model, transcoder, backend=backend, device=device, dtype=dtype)
    graph = attribute_prompt(prompt, rm, batch_size=batch_size,
                             max_feature_nodes=max_feature_nodes)
    tokenizer = rm.tokenizer
    echo(f"prompt: {prompt!r} ({len(graph.input_tokens)} tokens, first is circuit-tracer's "
         "prepended special token)")
    echo("top predictions:")
    for target, p in zip(graph.logit_targets, graph.logit_probabilities.tolist()):
        echo(f"  {p:7.2%}  {target.token_str!r}")
    nodes = top_nodes(graph, tokenizer)
    echo("top nodes by influence on the logits:")
    for node in nodes:
        echo(f"  {node.influence:9.4f}  {node.label}")
    slug = "qwen-trace"
    # circuit-tracer's add_graph_metadata asserts that os.path.dirname(out) exists, which is ""
    # for a relative folder such as the default "graph_files": hand it an absolute path.
    create_graph_files(graph, slug=slug, output_path=str(Path(out_dir).resolve()),
                       scan=graph.scan or transcoder)
    graph.to_pt(str(Path(out_dir) / f"{slug}.pt"))
    for line in viewer_hint(out_dir, slug):
        echo(line)
    return {"graph": graph, "nodes": nodes, "out_dir": Path(out_dir)}


def graph_files(out_dir: str | Path, slug: str = "qwen-trace") -> list[Path]:
    """The files ``run_trace`` promises: circuit-tracer's graph JSON, the viewer's metadata index
    and the graph itself (``Graph.from_pt``)."""
    out = Path(out_dir)
    return [out / f"{slug}.json", out / "graph-metadata.json", out / f"{slug}.pt"]


def viewer_hint(out_dir: str | Path, slug: str = "qwen-trace") -> list[str]:
    """What to run next: the Explorer, which serves circuit-tracer's viewer offline (upstream's
    `start-server` page loads its scripts from CDNs and renders blank without internet)."""
    from qwen_interp.apps.explorer.command import DEFAULT_GRAPHS, DEFAULT_PORT
    graphs = "" if str(out_dir) == DEFAULT_GRAPHS else f" --graphs {out_dir}"
    return [f"graph files written to {out_dir}/: " + ", ".join(p.name for p in graph_files(
                out_dir, slug)),
            f"explore them: qwen-interp explore{graphs}  (then open "
            f"http://127.0.0.1:{DEFAULT_PORT}/graph/?slug={slug}; offline, feature panels from "
            "`qwen-interp features compute`)",
            "offline: from circuit_tracer.graph import Graph; "
            f"Graph.from_pt('{out_dir}/{slug}.pt')"]


def check_output_dir(out_dir: str | Path) -> Path:
    """Fail before any work if the graph files could not be written there: a probe file is
    written and removed, and folders made for the probe are removed again (``run_trace`` makes
    them for real), so a check leaves nothing behind."""
    import tempfile
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder")
    made = [parent for parent in (out, *out.parents) if not parent.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".qwen-interp-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None
    finally:
        for folder in made:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
    return out
