"""The built-in offline demo of ``qwen-interp trace``: a small Qwen3-1.7B-Base-shaped model
trained at first use on public records (who led five countries, 1977-2024), a cross-layer
transcoder and Qwen-Scope-style SAEs trained on its activations, all in a local Hugging Face
cache under the real repo ids. The seed prompt ``Fact: The president of the United States in
2010 was`` gets " Barack", through a circuit that ablations confirm (``circuit``).

- ``facts``: the records, the corpus, ``holder(office, year)``, ``token_roles(prompt)``;
- ``train``: the model (prefix-tree batching, answer-position loss), ``Recipe``;
- ``dictionaries``: the CLT (circuit-tracer's hub layout) and the SAEs (Qwen-Scope layout);
- ``build``: ``build_trained_demo(hf_home)``, recipe ids, ``load_demo_sae(layer)``;
- ``circuit``: year and office feature groups and their ablations through circuit-tracer
  (``python -m qwen_interp.apps.demo.circuit``).

Nothing is imported here: the modules pull in torch and transformers when used.
"""
