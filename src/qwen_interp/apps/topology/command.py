"""``qwen-interp topology``: Mapper graphs of dictionary features (encoder, decoder,
co-activation), written as JSON and PNG for the Explorer's ``/topology`` page."""

from __future__ import annotations

import argparse

from qwen_interp.specs import Command

DEFAULT_OUT = "topology_out"
SOURCES = ("decoder", "encoder", "coactivation")


def int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise ValueError(f"{flag} {text!r}: expected comma-separated non-negative integers")
    return values


def configure(parser: argparse.ArgumentParser) -> None:
    from .settings import Settings
    d = Settings()
    parser.add_argument("--model", help="model repo id or alias (default: offline demo)")
    parser.add_argument("--transcoder", help="CLT repo id, alias or folder (default: offline "
                        "demo)")
    parser.add_argument("--sae", action="append", default=[], metavar="RELEASE:LAYERS",
                        help="map SAE features instead of the CLT's, e.g. "
                             "qwen-scope-3-1.7b-base-w32k-l50:6,12 (repeatable; equal widths)")
    parser.add_argument("--source", default="decoder", choices=SOURCES,
                        help="the vectors: decoder (default), encoder, or coactivation "
                             "profiles from --features")
    parser.add_argument("--decoder", default="sum", choices=("sum", "own"),
                        help="a CLT feature's decoder vector: the sum of its rows to all later "
                             "layers (default) or its row to its own layer")
    parser.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    parser.add_argument("--features", default=None, metavar="DIR",
                        help="a `qwen-interp features compute` run: node labels (top tokens) "
                             "and, for --source coactivation, the profiles")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder (default ./{DEFAULT_OUT})")
    parser.add_argument("--name", default=None,
                        help="file name stem (default: <dictionary>-<source>)")
    parser.add_argument("--dims", type=int, default=d.dims,
                        help=f"PCA coordinates the clustering uses (default {d.dims})")
    parser.add_argument("--lens-dims", type=int, default=d.lens_dims,
                        help=f"leading PCA coordinates used as the lens (default {d.lens_dims})")
    parser.add_argument("--resolutions", default=",".join(map(str, d.resolutions)),
                        help="hypercubes per lens dimension, coarse to fine, each a multiple of "
                             f"the one before (default {','.join(map(str, d.resolutions))})")
    parser.add_argument("--overlap", type=float, default=d.overlap,
                        help=f"cover overlap fraction (default {d.overlap})")
    parser.add_argument("--clusterer", default=d.clusterer, choices=("single", "dbscan"),
                        help="single: landmark k-NN single linkage (default); dbscan: "
                             "scikit-learn's DBSCAN per hypercube")
    parser.add_argument("--k", type=int, default=d.k, help=f"neighbours (default {d.k})")
    parser.add_argument("--eps", type=float, default=None,
                        help="linkage distance (default: estimated, see --eps-quantile)")
    parser.add_argument("--eps-quantile", type=float, default=d.eps_quantile,
                        help="eps = this quantile of the k-th neighbour distances (default "
                             f"{d.eps_quantile})")
    parser.add_argument("--min-size", type=int, default=d.min_size,
                        help=f"smaller clusters are noise (default {d.min_size})")
    parser.add_argument("--landmarks", type=int, default=d.landmarks,
                        help=f"landmarks for single linkage (default {d.landmarks})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default="cpu", help="where the dictionary is read (cpu)")


def settings_from(args: argparse.Namespace):
    from .settings import Settings
    settings = Settings(dims=args.dims, lens_dims=args.lens_dims,
                        resolutions=int_list(args.resolutions, "--resolutions"),
                        overlap=args.overlap, clusterer=args.clusterer, k=args.k, eps=args.eps,
                        eps_quantile=args.eps_quantile, min_size=args.min_size,
                        landmarks=args.landmarks, seed=args.seed)
    settings.check()
    return settings


def load_vectors(args: argparse.Namespace, layers, saes, demo: bool):
    from qwen_interp.apps import trace

    from .coactivation import coactivation_profiles
    from .vectors import clt_vectors, load_clt, sae_vectors
    if args.source == "coactivation":
        if args.features is None:
            raise ValueError("--source coactivation needs --features DIR (a `qwen-interp "
                             "features compute` run folder)")
        return coactivation_profiles(args.features, "sae" if saes else "clt", layers=layers)
    if demo:
        trace.start_demo(trace.DEFAULT_MODEL, trace.DEFAULT_TRANSCODER)
    if saes:
        loaded = {}
        for release, layer in saes:
            if demo:
                from qwen_interp.apps.demo.build import load_demo_sae
                loaded[layer] = load_demo_sae(layer, device=args.device)
            else:
                from sae_lens import SAE
                loaded[layer] = SAE.from_pretrained(release, f"layer{layer}",
                                                    device=args.device)
        name = ", ".join(sorted({release for release, _ in saes}))
        return sae_vectors(loaded, args.source, name=name)
    transcoder = args.transcoder or trace.DEFAULT_TRANSCODER
    clt = load_clt(transcoder, device=args.device)
    return clt_vectors(clt, args.source, layers=layers, decoder=args.decoder, name=transcoder)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from qwen_interp.apps.commands import quiet_trust_remote_code_warning
    from qwen_interp.apps.features.command import parse_saes

    from .build import map_features
    from .export import check_name, write_map
    from .labels import label_nodes
    from .vectors import materialize
    settings = settings_from(args)  # every bad value is one line, before any loading
    saes = parse_saes(args.sae)
    layers = int_list(args.layers, "--layers") if args.layers is not None else None
    if args.name is not None:
        check_name(args.name)
    demo = args.model is None and args.transcoder is None
    if args.model is not None and args.transcoder is None and not saes:
        raise ValueError("--model without --transcoder or --sae: say which dictionary to map")
    if saes and args.transcoder is not None:
        raise ValueError("--sae and --transcoder: map one dictionary at a time")
    store = None
    if args.features is not None:
        from qwen_interp.apps.explorer.store import FeatureStore
        store = FeatureStore.from_run(args.features)
    quiet_trust_remote_code_warning()
    vectors = load_vectors(args, layers, saes, demo)
    name = args.name or f"{vectors.dictionary}-{vectors.source}"
    with tempfile.TemporaryDirectory(prefix="qwen-topology-") as scratch:
        if vectors.source != "coactivation":  # read the dictionary once, not 4 + 2q times
            vectors = materialize(vectors, scratch)
        tmap = map_features(vectors, settings)
        label_nodes(tmap, store)
        json_path, png_path = write_map(tmap, args.out, name)
    ratio = ", ".join(f"{r:.3f}" for r in tmap.pca.explained_ratio[:settings.lens_dims])
    print(f"topology: {vectors.n} {vectors.source} vectors of {vectors.dictionary} "
          f"{vectors.name} (dim {vectors.dim}); lens = PC1..PC{settings.lens_dims} (explained "
          f"variance {ratio}); eps {tmap.eps:.4g}, {tmap.landmarks} landmarks")
    for level in tmap.levels:
        print(f"resolution {level.resolution}: {len(level.nodes)} nodes, {len(level.edges)} "
              f"edges, {level.components} components, {level.cycle_rank} independent cycles")
    print(f"map: {json_path}")
    print(f"picture: {png_path}")
    print(f"browse it: qwen-interp explore --topology {args.out} (page /topology)")
    return 0


COMMAND = Command("topology", "Mapper graphs of dictionary features (encoder, decoder, "
                  "co-activation)", configure=configure, run=run)
