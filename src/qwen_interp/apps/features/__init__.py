"""Feature statistics at dataset scale (``qwen-interp features compute``).

``corpus`` streams and packs documents, ``accumulators`` holds mergeable per-feature statistics,
``collect`` runs the one-pass-per-batch statistics pass over shards, ``ray_backend`` runs the same
shards on Ray, ``export`` and ``sidecar`` write Parquet tables and circuit-tracer's viewer
``features/`` folder, ``job`` ties them into one resumable run, ``command`` is the CLI.
"""
