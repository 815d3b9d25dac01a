"""Run by tests/test_train.py under torchrun: trains a tiny run and saves this rank's weights."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml
from safetensors.torch import save_file

from fusionkit.runtime.checkpoint import model_state
from fusionkit.runtime.config import RunConfig
from fusionkit.train.trainer import train_run


def main() -> None:
    """``ddp_worker.py CONFIG RUN_DIR [--resume]``: train (or resume), then write
    RUN_DIR/rank<r>.safetensors and RUN_DIR/rank<r>.history.json."""
    config = RunConfig.model_validate(yaml.safe_load(Path(sys.argv[1]).read_text()))
    run_dir = Path(sys.argv[2])
    resume = sys.argv[3:] == ["--resume"]
    trainer = train_run(config, run_dir=run_dir, synthetic=True, progress=False, resume=resume)
    rank = int(os.environ.get("RANK", "0"))
    save_file(model_state(trainer.model), str(run_dir / f"rank{rank}.safetensors"))
    (run_dir / f"rank{rank}.history.json").write_text(json.dumps(trainer.history))


if __name__ == "__main__":
    main()
