"""store/ must stay light: pages that only read the database never pay for torch."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_store_imports_no_torch():
    code = ("import sys, store, store.export, fra_core.accumulate, fra_core.datasets, store.report; "
            "heavy = [m for m in ('torch', 'transformer_lens', 'sae_lens', 'streamlit') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
