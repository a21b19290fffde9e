"""The Accelerate config files shipped in `posttrain/resources/accelerate/`.

    accelerate launch --config_file $(python -m posttrain.distributed.configs fsdp) -m posttrain.cli sft ...

`config_path("fsdp")` gives the file of a shipped config; any other argument is
taken as a path to the user's own file.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "resources" / "accelerate"
SHIPPED = {
    "ddp": "DDP, whole model on every GPU",
    "fsdp": "FSDP2 full shard, sharded checkpoints",
    "fsdp_offload": "FSDP2 full shard with parameters and optimizer state in CPU memory",
    "zero2": "DeepSpeed ZeRO-2 (optimizer state and gradients sharded)",
    "zero3": "DeepSpeed ZeRO-3 (parameters too), 16-bit weights gathered on save",
}


def config_path(name_or_path: str) -> Path:
    """A shipped config by name (`fsdp`), or an existing file."""
    if name_or_path in SHIPPED:
        return CONFIG_DIR / f"{name_or_path}.yaml"
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ConfigError("accelerate_config", f"{name_or_path}: no such file, and not a shipped config "
                                               f"({', '.join(SHIPPED)})")
    return path


if __name__ == "__main__":  # print the path of a shipped config, for shell use
    print(config_path(sys.argv[1] if len(sys.argv) > 1 else "fsdp"))
