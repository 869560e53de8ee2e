"""Tiny models on random data for the integration tests (CPU, a few seconds): a 2-layer GPT-2
for the Hugging Face Trainer and a 2-layer MLP language model for Lightning."""

from __future__ import annotations

import torch

VOCAB = 64


class TokenDataset(torch.utils.data.Dataset):
    """Random token sequences as the HF Trainer takes them (`input_ids` and `labels`)."""

    def __init__(self, n: int = 256, seq_len: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, seq_len), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def gpt2(width: int = 32, depth: int = 2):  # type: ignore[no-untyped-def]
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=width, n_layer=depth, n_head=2)
    return GPT2LMHeadModel(config)


def hf_args(output_dir: str, **overrides):  # type: ignore[no-untyped-def]
    from transformers import TrainingArguments

    options = {
        "output_dir": output_dir,
        "max_steps": 30,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    options.update(overrides)
    return TrainingArguments(**options)


def lightning_module(fail_at: int | None = None, width: int = 16, lr: float = 2e-3):  # type: ignore[no-untyped-def]
    """A 2-layer MLP next-token model whose training_step only returns its loss (logs nothing)."""
    try:
        import lightning.pytorch as pl
    except ImportError:  # pragma: no cover
        import pytorch_lightning as pl

    class MLP(pl.LightningModule):
        def __init__(self, width: int = 16, depth: int = 2, lr: float = 2e-3, fail_at: int | None = None) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.embed = torch.nn.Embedding(VOCAB, width)
            self.hidden = torch.nn.Linear(width, width)
            self.out = torch.nn.Linear(width, VOCAB)
            self.losses: list[float] = []

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            (ids,) = batch
            if self.hparams.fail_at is not None and batch_idx == self.hparams.fail_at:
                raise RuntimeError("loss exploded in the data loader")
            logits = self.out(torch.relu(self.hidden(self.embed(ids[:, :-1]))))
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)  # torch's default weight decay 0.01

    torch.manual_seed(0)
    return MLP(width=width, lr=lr, fail_at=fail_at)


def token_loader(batch_size: int = 4, seq_len: int = 8, n: int = 512):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, seq_len), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=batch_size, shuffle=True)
