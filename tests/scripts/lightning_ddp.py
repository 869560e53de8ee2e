"""`python lightning_ddp.py`: Lightning DDP in 2 processes on the CPU (gloo) with the hpscale
callback; each rank writes the losses its training_step returned to $HP_OUT.<rank>."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover
    import pytorch_lightning as pl

from hpscale.callbacks import HpscaleLightningCallback
from hpscale.client import Client
from tests.scripts.tiny_models import lightning_module, token_loader

with Client(os.environ["HP_URL"], os.environ["HP_TOKEN"]) as hp:
    callback = HpscaleLightningCallback(hp, os.environ["HP_STUDY"], run_key="ddp-job")
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_steps=10,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = lightning_module()
    trainer.fit(module, token_loader())
    Path(f"{os.environ['HP_OUT']}.{trainer.global_rank}").write_text(json.dumps(module.losses))
