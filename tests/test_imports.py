"""``import diffspeed`` stays light: heavy libraries are imported where they are used."""

from __future__ import annotations

import json
import subprocess
import sys

#: Imported by the functions that need them, never by ``import diffspeed``.
HEAVY = (
    "diffusers",
    "accelerate",
    "matplotlib",
    "peft",
    "transformers",
    "scipy",
    "sklearn",
    "torchao",
    "torch._dynamo",
    "adjustText",
)


def test_import_diffspeed_leaves_heavy_modules_unloaded():
    code = (
        "import json, sys; import diffspeed; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(got.stdout.strip().splitlines()[-1])
    assert not loaded, (
        f"import diffspeed imports {loaded}; import them inside the functions that use them"
    )
