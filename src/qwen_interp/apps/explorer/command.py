"""``qwen-interp explore``: the local Explorer over graph files, feature statistics and a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from qwen_interp.specs import Command

DEFAULT_GRAPHS = "graph_files"  # what `qwen-interp trace` writes
DEFAULT_PORT = 8042  # next to circuit-tracer start-server's 8041


def configure(parser: argparse.ArgumentParser) -> None:
    from qwen_interp.apps.commands import natural_int
    parser.add_argument("--graphs", default=None, metavar="DIR",
                        help=f"graph files from `qwen-interp trace` (default: ./{DEFAULT_GRAPHS} "
                             "if it exists)")
    parser.add_argument("--features", default=None, metavar="DIR",
                        help="a `qwen-interp features compute` output folder (default: "
                             "./features_out if it exists)")
    parser.add_argument("--topology", default=None, metavar="DIR",
                        help="maps from `qwen-interp topology` for the /topology page (default: "
                             "./topology_out if it exists)")
    parser.add_argument("--model", help="model repo id or alias (default: offline demo)")
    parser.add_argument("--transcoder", help="CLT repo id or alias (default: offline demo)")
    parser.add_argument("--sae", action="append", default=[], metavar="RELEASE:LAYERS",
                        help="attach Qwen-Scope SAEs for Analyze/Compare/Steer (repeatable)")
    parser.add_argument("--no-model", action="store_true",
                        help="serve graphs and feature pages only (no Analyze/Compare/Steer)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=natural_int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--verbose", action="store_true", help="log every request")


def _folder(given: str | None, default: str, flag: str) -> Path | None:
    if given is not None:
        path = Path(given)
        if not path.is_dir():
            raise ValueError(f"{flag} {given}: no such folder")
        return path
    return Path(default) if Path(default).is_dir() else None


def run(args: argparse.Namespace) -> int:
    from qwen_interp.apps import trace
    from qwen_interp.apps.features.command import DEFAULT_OUT, parse_saes

    from .app import Explorer
    from .server import make_server
    graphs = _folder(args.graphs, DEFAULT_GRAPHS, "--graphs")
    features = _folder(args.features, DEFAULT_OUT, "--features")
    topology = _folder(args.topology, "topology_out", "--topology")
    saes = parse_saes(args.sae)
    if args.no_model and (args.model or args.transcoder or saes):
        raise ValueError("--no-model cannot be combined with --model, --transcoder or --sae")
    session = model = transcoder = None
    if not args.no_model:
        model = args.model or trace.DEFAULT_MODEL
        transcoder = args.transcoder or (None if args.model else trace.DEFAULT_TRANSCODER)
        device = trace.resolve_device(args.device)
        if args.model is None and args.transcoder is None:
            trace.start_demo(model, trace.DEFAULT_TRANSCODER)
        from qwen_interp.apps.session import Session
        session = Session.from_pretrained(model, transcoder, device=device)
        for release, layer in saes:
            session.add_saes(release, [layer])
    explorer = Explorer(graphs, features, session, model=model, transcoder=transcoder,
                        topology=topology)
    server = make_server(explorer, args.host, args.port, verbose=args.verbose)
    host, port = server.socket.getsockname()[:2]
    shown = [f"graphs {graphs or 'none'}",
             "features " + (", ".join(f"{d.id} {d.folder}" for d in
                                      explorer.store.dictionaries.values()) or "none"),
             f"topology {topology or 'none'}", f"model {model or 'none'}"]
    print(f"explorer: serving http://{host}:{port}/ ({'; '.join(shown)}); Ctrl-C stops it",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


COMMAND = Command("explore", "the local Explorer: graphs, feature pages, Analyze/Compare/Steer",
                  configure=configure, run=run)
