"""What the Explorer's tests serve, built the real way on the small offline Qwen3-1.7B-Base: a
graph from circuit-tracer's ``attribute`` + ``create_graph_files`` (as ``qwen-interp trace``
writes it), feature statistics from ``features.job.compute`` (CLT at every layer and a
Qwen-Scope-format SAE at layers 0 and 2), and the session that made both."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from helpers import SEED_PROMPT as PROMPT  # the seed study's prompt: in the corpus, and traced

SLUG = "explorer-test"
MODEL = "Qwen/Qwen3-1.7B-Base"
TRANSCODER = "bluelight-qwen3-1.7b"
SAE_LAYERS = (0, 2)
WORDS = ("the cat sat on a warm mat while rain fell over quiet hills and an old dog slept by "
         "the door because winter had come early to the small town of Alder").split()


@dataclass
class ExplorerData:
    release: Any  # the tiny SAE release (registered while the builder's block is open)
    graphs: Path
    features: Path
    session: Any

    def graph_json(self) -> dict:
        return json.loads((self.graphs / f"{SLUG}.json").read_text())

    def record(self, dictionary: str, layer: int, feature: int) -> dict:
        """A feature's record as the sidecar on disk holds it."""
        from qwen_interp.apps.features.sidecar import read_record
        folder = self.features / ("features" if dictionary == "clt" else "sae_features")
        return read_record(folder, layer, feature)


def build(release, root: Path, session=None) -> ExplorerData:
    """``release``: what ``helpers.stand_in_dictionaries(hub, registry)`` yields; call inside
    its block."""
    from circuit_tracer.utils.create_graph_files import create_graph_files

    from qwen_interp.apps.features.accumulators import StatsConfig
    from qwen_interp.apps.features.collect import RunConfig, load_session
    from qwen_interp.apps.features.job import compute
    rng = np.random.default_rng(0)
    corpus = root / "corpus.txt"
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))).capitalize() + "."
             for _ in range(40)]
    corpus.write_text("\n".join([*lines, PROMPT]) + "\n")
    saes = tuple((release.release, n) for n in SAE_LAYERS)
    config = RunConfig(model=MODEL, transcoder=TRANSCODER, corpus=str(corpus),
                       saes=saes, ctx_len=16, batch_size=4, shard_batches=2,
                       stats=StatsConfig(top_k=5, samples=8, before=3, after=2, partners=3,
                                         bins=64))
    session = session or load_session(config, device="cpu")
    features = root / "features_out"
    compute(config, features, session=session, progress=False)
    graphs = root / "graph_files"
    graphs.mkdir()
    graph = session.attribute(PROMPT, max_n_logits=5, desired_logit_prob=0.9, batch_size=64)
    create_graph_files(graph, slug=SLUG, output_path=str(graphs.resolve()),
                       scan=graph.scan or TRANSCODER)
    return ExplorerData(release, graphs, features, session)
