"""`custom_generate` entry point written by hf_specdec 0.1.0: speculative decoding with MedusaStrategy for HuggingFaceTB/SmolLM2-135M-Instruct.

    model.generate(**inputs, custom_generate="<this folder or Hub repo>", trust_remote_code=True)

The output is the one plain `generate` gives (greedy: token for token; sampling: the same distribution).
Needs hf_specdec installed next to Transformers (it is not on PyPI): pip install git+<hf_specdec's git URL>, or pip install /path/to/hf_specdec (a local checkout)
"""

import hf_specdec.custom_generate

REPO_ID = None  # where it was pushed; used only if the `custom_generate=` argument cannot be read


def generate(model, **kwargs):
    return hf_specdec.custom_generate.run_custom_generate(model, kwargs, repo_id=REPO_ID)
