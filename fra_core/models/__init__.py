"""Models: resolve a reference (`load_model`), local folders, the built-in demo, tokenizers, head scores.

    load_model(ref, device=None, workspace=None) -> HookedTransformer
        ref: "demo" (built-in), a workspace model folder name, a folder path, or an official TL name
        (`gpt2-small`; fails fast offline with ModelLoadError)
    save_local_model(model, folder, tokenizer=None, meta=None) / load_local_model(folder, device)
    list_models(workspace) / model_summary(model)

Submodules: `local` (folders), `loading` (the resolver), `demo` (the built-in model and its texts),
`tokenizers` (word/char vocab tokenizers), `head_scores`, `prompting` (text → tokens, pattern tables),
`tiny` (small seeded random models for tests and benchmarks).
"""

from fra_core.models.loading import (
                                   DEMO_REF,
                                   ModelEntry,
                                   is_cached,
                                   list_models,
                                   load_model,
                                   model_summary,
                                   official_repo_id,
)
from fra_core.models.local import (
                                   CONFIG_FILE,
                                   META_FILE,
                                   TOKENIZER_DIR,
                                   WEIGHTS_FILE,
                                   ModelLoadError,
                                   cfg_from_json,
                                   cfg_to_json,
                                   load_local_model,
                                   read_meta,
                                   save_local_model,
)

__all__ = ["CONFIG_FILE", "DEMO_REF", "META_FILE", "TOKENIZER_DIR", "WEIGHTS_FILE", "ModelEntry", "ModelLoadError",
           "cfg_from_json", "cfg_to_json", "is_cached", "list_models", "load_local_model", "load_model",
           "model_summary", "official_repo_id", "read_meta", "save_local_model"]
