"""Run in a fresh interpreter with HF_HOME = the demo's cache (huggingface_hub reads it at
import): the planted groups of the built-in demo, found by behaviour (``demo.circuit``: features
whose activation moves when only the year / only the office word of the prompt is swapped), set
against the groups ``qwen-interp study`` proposed (``OUT/groups.yaml``). Prints JSON."""

import json
import sys

from qwen_interp.apps.demo import circuit
from qwen_interp.apps.study.autogroup import score_grouping
from qwen_interp.apps.study.groups import FeatureGroup, GroupSet


def main(out: str) -> None:
    rm = circuit.replacement_model()
    planted = circuit.feature_groups(rm)
    truth = {"year": planted.year_digits + planted.year_final, "office": planted.office}
    planted_set = [FeatureGroup(name, tuple(nodes)) for name, nodes in truth.items()]
    proposed = GroupSet.load(f"{out}/groups.yaml")
    precision = {g.name: {name: len({n.key for n in g.nodes} & set(nodes)) / len(g.nodes)
                          for name, nodes in truth.items()} for g in proposed}
    print(json.dumps({"score": score_grouping(proposed, planted_set), "precision": precision,
                      "planted_sizes": {k: len(v) for k, v in truth.items()},
                      "names": sorted(circuit.F.name_answers()),
                      "us_presidents": sorted({circuit.F.answer(t) for t in circuit.F.US.terms})}))


if __name__ == "__main__":
    main(sys.argv[1])
