"""scripts/gen_cli_docs.py loaded as a module, for the tests that check the CLI reference."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gen_cli_docs.py"


def load():
    """The script as the module `gen_cli_docs` (it finds each command's config dataclass)."""
    if "gen_cli_docs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gen_cli_docs", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gen_cli_docs"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["gen_cli_docs"]
