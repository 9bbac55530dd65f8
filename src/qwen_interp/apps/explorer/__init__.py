"""The Explorer (``qwen-interp explore``): a local, offline web application over this project's
files and, optionally, a live model.

- ``/graph/``: circuit-tracer's own attribution-graph viewer for every graph in a folder, its
  CDN libraries replaced by vendored copies and its feature panels read from local sidecars
  (``viewer.py``, ``vendor.py``);
- ``/feature``: a feature's page from its record (``store.py``);
- ``/lab``: Analyze / Compare / Steer on the live model, as in Qwen-Scope's demo (``live.py``);
- ``server.py``: the HTTP server; ``app.py``: the answers; ``command.py``: the CLI.

    from qwen_interp.apps.explorer import Explorer, start_server
    server = start_server(Explorer("graph_files", "features_out", session))
    print(server.url); ...; server.stop()

See docs/explorer.md.
"""

from .app import Explorer
from .server import RunningServer, make_server, start_server

__all__ = ["Explorer", "RunningServer", "make_server", "start_server"]
