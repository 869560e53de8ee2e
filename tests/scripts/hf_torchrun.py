"""`torchrun --nproc_per_node 2 hf_torchrun.py`: the HF Trainer in 2 processes (gloo, CPU) with
the hpscale callback; rank 0 writes the Trainer's log history to $HP_OUT."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from transformers import Trainer

from hpscale.callbacks import HpscaleTrainerCallback
from hpscale.client import Client
from tests.scripts.tiny_models import TokenDataset, gpt2, hf_args

with Client(os.environ["HP_URL"], os.environ["HP_TOKEN"]) as hp:
    callback = HpscaleTrainerCallback(hp, os.environ["HP_STUDY"], run_key="torchrun-job")
    args = hf_args(os.environ["HP_DIR"], max_steps=12, ddp_backend="gloo")
    trainer = Trainer(model=gpt2(), args=args, train_dataset=TokenDataset(), callbacks=[callback])
    callback.train(trainer)
    if trainer.is_world_process_zero():
        Path(os.environ["HP_OUT"]).write_text(json.dumps(trainer.state.log_history))
# Tear the process group down before the interpreter does: a rank that exits with gloo's threads
# still alive can abort ("terminate called without an active exception", SIGABRT), which CI saw once.
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
