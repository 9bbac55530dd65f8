"""Built-in plugin: BluelightAI cross-layer transcoders in circuit-tracer."""

from __future__ import annotations

from qwen_interp import hookimpl
from qwen_interp.specs import TranscoderRelease

# Hook points: the encoder reads the MLP input after the pre-MLP RMSNorm *with* its gain, the
# decoder writes the MLP output (FACTS.md §3).
BLUELIGHT_RELEASES = (
    TranscoderRelease("bluelightai/clt-qwen3-0.6b-base-20k", "Qwen/Qwen3-0.6B-Base", n_layers=28,
                      d_latent=20480, feature_input_hook="mlp.hook_in",
                      feature_output_hook="mlp.hook_out", aliases=("bluelight-qwen3-0.6b",)),
    TranscoderRelease("bluelightai/clt-qwen3-1.7b-base-20k", "Qwen/Qwen3-1.7B-Base", n_layers=28,
                      d_latent=20480, feature_input_hook="mlp.hook_in",
                      feature_output_hook="mlp.hook_out", aliases=("bluelight-qwen3-1.7b",)),
)


@hookimpl
def register_transcoder_releases(register):
    for release in BLUELIGHT_RELEASES:
        register(release)
