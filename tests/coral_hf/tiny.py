"""Tiny BERT models, data and Trainer arguments shared by the coral_hf tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertTokenizer,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from coral_core import Repository
from coral_hf import CoralTrainerCallback

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(45))]


def tiny_config(**changes: Any) -> BertConfig:
    """A one-layer BERT of a few thousand parameters (vocabulary of 50)."""
    values: dict[str, Any] = {
        "vocab_size": len(VOCAB),
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 16,
        "num_labels": 2,
    }
    return BertConfig(**{**values, **changes})


def classifier(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config())


def masked_lm(seed: int = 0) -> BertForMaskedLM:
    """A model with tied weights (the LM head's decoder is the word embedding)."""
    torch.manual_seed(seed)
    return BertForMaskedLM(tiny_config())


def tokenizer(folder: Path) -> BertTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"))


class Pairs(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences labelled by their first token."""

    def __init__(self, size: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, len(VOCAB), (size, 8), generator=generator)
        self.labels = (self.ids[:, 0] > len(VOCAB) // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    predicted = np.asarray(prediction.predictions).argmax(-1)
    return {"accuracy": float((predicted == prediction.label_ids).mean())}


def arguments(output_dir: Path, **changes: Any) -> TrainingArguments:
    """Three epochs of four steps on the CPU, evaluated and saved every epoch."""
    values: dict[str, Any] = {
        "num_train_epochs": 3,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-2,
        "save_strategy": "epoch",
        "eval_strategy": "epoch",
        "logging_strategy": "epoch",
        "metric_for_best_model": "accuracy",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    return TrainingArguments(output_dir=str(output_dir), **{**values, **changes})


def train(
    repo: Repository,
    output_dir: Path,
    resume: Path | None = None,
    *,
    keep_trainer_checkpoints: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    **changes: object,
) -> tuple[Trainer, CoralTrainerCallback]:
    """A tiny classifier trained with the Coral callback (``arguments`` with
    ``changes``); ``resume``: a folder to resume from. Returns the Trainer and callback."""
    callback = CoralTrainerCallback(repo, "bert", keep_trainer_checkpoints=keep_trainer_checkpoints)
    trainer = Trainer(
        model=classifier(seed=1 if resume else 0),  # a resumed run must not need the same init
        args=arguments(output_dir, **changes),
        train_dataset=Pairs(),
        eval_dataset=Pairs(16, seed=1),
        compute_metrics=accuracy,
        callbacks=[callback, *callbacks],
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer, callback


#: Six epochs of four steps with load_best_model_at_end: the best (accuracy) is step 12.
BEST_RUN: dict[str, Any] = {"num_train_epochs": 6, "load_best_model_at_end": True}


def disk_usage(folder: Path) -> tuple[int, int]:
    """(bytes in the files, bytes the file system allocated for them) under ``folder``."""
    size = allocated = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            info = path.stat()
            size += info.st_size
            allocated += info.st_blocks * 512
    return size, allocated
