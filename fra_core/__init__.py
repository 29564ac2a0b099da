"""FRA Studio core library: models, data, SAEs, Feature-Resolved Attention, jobs, CLI.

Pure Python/torch. Never imports streamlit or duckdb (see docs/CONVENTIONS.md).
"""

import warnings

# TransformerLens 3.x warns that HookedTransformer is deprecated in favour of 4.x; sae-lens 6 needs 3.x.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"transformer_lens.*")
warnings.filterwarnings("ignore", message=r".*HookedTransformer.*deprecated.*")

__version__ = "0.1.0"
