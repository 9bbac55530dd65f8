"""Feature groups ("supernodes"): named sets of dictionary features at token positions.

A circuit study names groups of features that do one job, as BluelightAI's worked study of
``Fact: The president of the United States in 2010 was`` does: "president" (features on
" president"), "year ~2010" (on the year's digits), "say a political figure" (on " was"),
"events ~2010". Here a group is a :class:`FeatureGroup` of :class:`FeatureNode` s and a study's
groups are a :class:`GroupSet` (ordered, unique names, disjoint nodes).

A node is ``(layer, position, feature, dictionary)``: ``position`` counts circuit-tracer's
tokens, whose position 0 is the special token it prepends (``<|endoftext|>`` for Qwen3);
``dictionary`` is ``"clt"`` for the graph's transcoder, or an SAE release/id, so SAE features
can be grouped too. In Python::

    from qwen_interp.apps.study.groups import GroupSet, group
    groups = GroupSet([group("president", (3, 5, 120), (4, 5, 77), label="president"),
                       group("year", (2, 10, 9), (2, 11, 31), label="year ~2010")],
                      prompt="Fact: The president of the United States in 2010 was")
    groups.save("groups.yaml")

File format (YAML, read with ``yaml.safe_load``, written with ``yaml.safe_dump``)::

    prompt: "Fact: The president of the United States in 2010 was"   # optional
    dictionary: clt          # optional: the default dictionary of every node ("clt")
    groups:
      - name: year           # required, unique in the file
        label: "year ~2010"  # optional
        description: ...     # optional
        dictionary: clt      # optional: the default for this group's nodes
        nodes:               # at least one; a node may sit in one group only
          - [2, 10, 9]                          # [layer, position, feature]
          - {layer: 2, position: 11, feature: 31, dictionary: "some-sae-release/layer_2"}

Layer, position and feature are non-negative integers. Any other key, a wrong type, a duplicate
name or node, or an empty group is refused with one ``ValueError`` naming the file and the entry.

Graph helpers: :func:`graph_feature_nodes` lists a circuit-tracer ``Graph``'s feature nodes (its
``selected_features``, rows ``(layer, pos, feature)`` of ``active_features``, in adjacency order)
with their activations; :func:`validate_against` checks that every node of every group is an active
feature of the graph (or, ``selected=True``, one of its feature nodes).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DICTIONARY = "clt"
_FILE_KEYS = ("prompt", "dictionary", "groups")
_GROUP_KEYS = ("name", "label", "description", "dictionary", "nodes")
_NODE_KEYS = ("layer", "position", "feature", "dictionary")
_COORDS = ("layer", "position", "feature")


def _natural(what: str, value: object) -> int:
    """``value`` as a plain int; numpy/torch integers pass, bools, floats and strings do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value}")
    return int(value)


def _text(what: str, value: object, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__} {value!r:.60}")
    if not empty and not value.strip():
        raise ValueError(f"{what} must not be empty")
    return value


@dataclass(frozen=True, order=True)
class FeatureNode:
    """One dictionary feature at one token position."""

    layer: int
    position: int
    feature: int
    dictionary: str = DEFAULT_DICTIONARY

    def __post_init__(self) -> None:
        for name in _COORDS:
            object.__setattr__(self, name, _natural(name, getattr(self, name)))
        _text("dictionary", self.dictionary, empty=False)

    @property
    def key(self) -> tuple[int, int, int]:
        """(layer, position, feature): a row of a graph's ``active_features``."""
        return (self.layer, self.position, self.feature)

    def __str__(self) -> str:
        where = "" if self.dictionary == DEFAULT_DICTIONARY else f" of {self.dictionary}"
        return f"L{self.layer} feature {self.feature} at position {self.position}{where}"


NodeLike = FeatureNode | tuple | list


def as_node(node: NodeLike, dictionary: str = DEFAULT_DICTIONARY) -> FeatureNode:
    """A FeatureNode from itself or ``(layer, position, feature[, dictionary])``."""
    if isinstance(node, FeatureNode):
        return node
    if isinstance(node, (tuple, list)) and len(node) in (3, 4):
        layer, position, feature, *rest = node
        return FeatureNode(layer, position, feature, rest[0] if rest else dictionary)
    raise ValueError(f"a node must be [layer, position, feature] or a FeatureNode, got {node!r}")


@dataclass(frozen=True)
class FeatureGroup:
    """A named, non-empty set of feature nodes (kept in the given order, no repeats)."""

    name: str
    nodes: tuple[FeatureNode, ...]
    label: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        _text("a group's name", self.name, empty=False)
        _text(f"group {self.name!r}: label", self.label)
        _text(f"group {self.name!r}: description", self.description)
        if isinstance(self.nodes, (str, bytes, FeatureNode)) or not isinstance(
                self.nodes, Iterable):
            raise ValueError(f"group {self.name!r}: nodes must be a list of nodes, "
                             f"got {self.nodes!r:.60}")
        nodes = tuple(as_node(n) for n in self.nodes)
        if not nodes:
            raise ValueError(f"group {self.name!r} has no nodes")
        seen: set[FeatureNode] = set()
        for node in nodes:
            if node in seen:
                raise ValueError(f"group {self.name!r} lists {node} twice")
            seen.add(node)
        object.__setattr__(self, "nodes", nodes)

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(sorted({n.position for n in self.nodes}))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({n.layer for n in self.nodes}))

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[FeatureNode]:
        return iter(self.nodes)

    def __contains__(self, node: object) -> bool:
        return node in self.nodes


def group(name: str, *nodes: NodeLike, label: str = "", description: str = "",
          dictionary: str = DEFAULT_DICTIONARY) -> FeatureGroup:
    """A group from ``(layer, position, feature)`` tuples (or FeatureNodes), by hand."""
    return FeatureGroup(name, tuple(as_node(n, dictionary) for n in nodes), label=label,
                        description=description)


@dataclass
class GroupSet:
    """A study's groups: ordered, unique names, each node in one group at most."""

    groups: list[FeatureGroup] = field(default_factory=list)
    prompt: str | None = None

    def __post_init__(self) -> None:
        if self.prompt is not None:
            _text("prompt", self.prompt)
        given, self.groups = list(self.groups), []
        self._owner: dict[FeatureNode, str] = {}
        for g in given:
            self.add(g)

    def add(self, group: FeatureGroup) -> FeatureGroup:
        if not isinstance(group, FeatureGroup):
            raise ValueError(f"expected a FeatureGroup, got {type(group).__name__}")
        if group.name in self.names:
            raise ValueError(f"duplicate group name {group.name!r}")
        for node in group.nodes:
            if node in self._owner:
                raise ValueError(f"{node} is in group {self._owner[node]!r} and in group "
                                 f"{group.name!r}: a node belongs to one group")
        for node in group.nodes:
            self._owner[node] = group.name
        self.groups.append(group)
        return group

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def nodes(self) -> list[FeatureNode]:
        """Every group's nodes, in group order."""
        return [n for g in self.groups for n in g.nodes]

    def group_of(self, node: FeatureNode) -> str | None:
        return self._owner.get(node)

    def __iter__(self) -> Iterator[FeatureGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __getitem__(self, key: str | int) -> FeatureGroup:
        if isinstance(key, int):
            return self.groups[key]
        for g in self.groups:
            if g.name == key:
                return g
        raise KeyError(f"no group {key!r} (groups: {', '.join(self.names) or 'none'})")

    def validate_against(self, graph, *, dictionary: str = DEFAULT_DICTIONARY,
                         selected: bool = False) -> None:
        """See the module function :func:`validate_against`."""
        validate_against(self, graph, dictionary=dictionary, selected=selected)

    # --- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The file's data: the most common dictionary is written once, at the top."""
        counts: dict[str, int] = {}
        for node in self.nodes():
            counts[node.dictionary] = counts.get(node.dictionary, 0) + 1
        default = max(counts, key=lambda d: (counts[d], d == DEFAULT_DICTIONARY), default=None)
        data: dict[str, Any] = {}
        if self.prompt is not None:
            data["prompt"] = self.prompt
        if default is not None and default != DEFAULT_DICTIONARY:
            data["dictionary"] = default
        data["groups"] = [_group_data(g, default or DEFAULT_DICTIONARY) for g in self.groups]
        return data

    @classmethod
    def from_dict(cls, data: object, source: str = "<groups>") -> GroupSet:
        """Parse the file format above; ``source`` names the file in errors."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a mapping with a 'groups' list, "
                             f"got {type(data).__name__}")
        _check_keys(data, _FILE_KEYS, source, "the top level")
        try:
            prompt = data.get("prompt")
            if prompt is not None:
                _text("prompt", prompt)
            default = _text("dictionary", data.get("dictionary", DEFAULT_DICTIONARY),
                            empty=False)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        entries = data.get("groups")
        if not isinstance(entries, list):
            raise ValueError(f"{source}: 'groups' must be a list of groups, got "
                             f"{type(entries).__name__ if entries is not None else 'nothing'}")
        out = cls(prompt=prompt)
        for i, entry in enumerate(entries):
            where = f"groups[{i}]"
            if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                where += f" ({entry['name']!r})"
            try:
                out.add(_parse_group(entry, default, source, where))
            except ValueError as exc:
                if str(exc).startswith(f"{source}: "):
                    raise
                raise ValueError(f"{source}: {where}: {exc}") from None
        return out

    @classmethod
    def load(cls, path: str | Path) -> GroupSet:
        import yaml
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def dumps(self) -> str:
        import yaml
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True,
                              default_flow_style=None, width=100)

    def save(self, path: str | Path) -> Path:
        """Write the YAML file atomically (an existing file is replaced only when complete)."""
        from qwen_interp.atomic import replace_file
        path = Path(path)
        text = self.dumps()
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return path


def _check_keys(entry: Mapping, allowed: tuple[str, ...], source: str, where: str) -> None:
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        raise ValueError(f"{source}: {where}: unknown key(s) {', '.join(map(repr, unknown))} "
                         f"(allowed: {', '.join(allowed)})")


def _parse_group(entry: object, default: str, source: str, where: str) -> FeatureGroup:
    if not isinstance(entry, Mapping):
        raise ValueError(f"a group must be a mapping with 'name' and 'nodes', got "
                         f"{type(entry).__name__} {entry!r:.60}")
    _check_keys(entry, _GROUP_KEYS, source, where)
    if "name" not in entry:
        raise ValueError("a group needs a 'name'")
    name = _text("'name'", entry["name"], empty=False)
    label = _text("'label'", entry.get("label") or "")
    description = _text("'description'", entry.get("description") or "")
    dictionary = _text("'dictionary'", entry.get("dictionary", default), empty=False)
    nodes = entry.get("nodes")
    if not isinstance(nodes, list):
        raise ValueError(f"'nodes' must be a list of [layer, position, feature], got "
                         f"{type(nodes).__name__ if nodes is not None else 'nothing'}")
    if not nodes:
        raise ValueError("the group has no nodes")
    parsed = []
    for j, node in enumerate(nodes):
        try:
            parsed.append(_parse_node(node, dictionary, source, f"{where}.nodes[{j}]"))
        except ValueError as exc:
            if str(exc).startswith(f"{source}: "):
                raise
            raise ValueError(f"{source}: {where}.nodes[{j}] {node!r:.80}: {exc}") from None
    return FeatureGroup(name, tuple(parsed), label=label, description=description)


def _parse_node(node: object, dictionary: str, source: str, where: str) -> FeatureNode:
    if isinstance(node, Mapping):
        _check_keys(node, _NODE_KEYS, source, where)
        missing = [k for k in _COORDS if k not in node]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return FeatureNode(node["layer"], node["position"], node["feature"],
                           node.get("dictionary", dictionary))
    if isinstance(node, list):
        if len(node) != 3:
            raise ValueError(f"a node list is [layer, position, feature], got {len(node)} "
                             "values")
        return FeatureNode(node[0], node[1], node[2], dictionary)
    raise ValueError("a node is [layer, position, feature] or {layer, position, feature}")


def _group_data(g: FeatureGroup, default: str) -> dict[str, Any]:
    data: dict[str, Any] = {"name": g.name}
    if g.label:
        data["label"] = g.label
    if g.description:
        data["description"] = g.description
    data["nodes"] = [list(n.key) if n.dictionary == default else
                     {"layer": n.layer, "position": n.position, "feature": n.feature,
                      "dictionary": n.dictionary} for n in g.nodes]
    return data


# --- circuit-tracer graphs ------------------------------------------------------------------
def graph_feature_nodes(graph, dictionary: str = DEFAULT_DICTIONARY) -> dict[FeatureNode, float]:
    """The graph's feature nodes in adjacency order (row ``i`` of ``adjacency_matrix`` is
    ``selected_features[i]``), each with its activation (``activation_values`` is indexed like
    ``active_features``, as circuit-tracer's ``create_graph_files`` reads it)."""
    rows = graph.active_features[graph.selected_features].tolist()
    values = graph.activation_values[graph.selected_features].tolist()
    return {FeatureNode(layer, pos, feat, dictionary): float(value)
            for (layer, pos, feat), value in zip(rows, values)}


def validate_against(groups: GroupSet | Iterable[FeatureGroup], graph, *,
                     dictionary: str = DEFAULT_DICTIONARY, selected: bool = False) -> None:
    """Raise ValueError, naming the group and node, unless every node is an active feature of
    ``graph`` (a row of its ``active_features``) from ``dictionary``; with ``selected=True``
    it must also be one of the graph's feature nodes (``selected_features``: the ones in the
    adjacency matrix and the viewer). Nodes of another dictionary never are."""
    nodes = graph_feature_nodes(graph, dictionary)
    active = {tuple(row) for row in graph.active_features.tolist()}
    n_layers, n_pos = int(graph.cfg.n_layers), len(graph.input_tokens)
    for g in groups:
        for node in g.nodes:
            if node in nodes or (not selected and node.dictionary == dictionary
                                 and node.key in active):
                continue
            if node.dictionary != dictionary:
                why = (f"its dictionary is {node.dictionary!r}; the graph's features are "
                       f"{dictionary!r}")
            elif node.layer >= n_layers or node.position >= n_pos:
                why = (f"the graph has {n_layers} layers and {n_pos} positions (position 0 is "
                       "the prepended special token)")
            elif node.key in active:
                why = "it is active on the prompt but not a node of the graph (not selected)"
            else:
                why = "it is not active on the graph's prompt"
            raise ValueError(f"group {g.name!r}: {node} is not a feature of the graph: {why}")
