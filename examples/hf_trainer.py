"""Hugging Face Trainer with Coral: every checkpoint a commit, the best one tagged.

Trains a tiny BERT classifier (built from a config, nothing downloaded) for a
few epochs with ``CoralTrainerCallback``, lists the commits, restores the best
checkpoint with ``from_pretrained``, and resumes training from a commit with
``trainer.train(resume_from_checkpoint=...)``, ending on the same weights bit
for bit as the run that never stopped.

    python examples/hf_trainer.py [WORK_FOLDER]
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported

import numpy as np
import torch
import transformers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    EvalPrediction,
    Trainer,
    TrainingArguments,
)

from coral_core import CheckpointConfig, Repository
from coral_hf import CoralTrainerCallback, checkout_checkpoint, from_pretrained


class Sequences(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences; the label says whether the first token is in the upper half."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (size, 12), generator=generator)
        self.labels = (self.ids[:, 0] >= 32).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    predicted = np.asarray(prediction.predictions).argmax(-1)
    return {"accuracy": float((predicted == prediction.label_ids).mean())}


def new_model() -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config)


def trainer(repo: Repository, output_dir: Path) -> tuple[Trainer, CoralTrainerCallback]:
    # Keep the two best checkpoints (and the newest); the metric is the Trainer's, as it logs it.
    policy = CheckpointConfig(save_on_best_metric="eval_accuracy", keep_best_n_checkpoints=2)
    callback = CoralTrainerCallback(repo, "bert-tiny", policy)
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=3,
        per_device_train_batch_size=16,
        learning_rate=5e-3,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,  # the Trainer's own folders: Coral keeps the history
        logging_strategy="epoch",
        metric_for_best_model="accuracy",  # -> the bert-tiny/best pointer, higher is better
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    run = Trainer(
        model=new_model(),
        args=args,
        train_dataset=Sequences(96, seed=0),
        eval_dataset=Sequences(64, seed=1),
        compute_metrics=accuracy,
        callbacks=[callback],
    )
    return run, callback


def main(folder: str = "hf-trainer-demo") -> None:
    transformers.utils.logging.disable_progress_bar()
    root = Path(folder)
    if root.exists():  # a previous run's demo: start over
        shutil.rmtree(root)
    repo = Repository(root / "repo", init=True)

    # 1. Train; the callback commits at every save the Trainer makes.
    run, callback = trainer(repo, root / "out")
    run.train()
    assert callback.manager is not None
    print("checkpoints:")
    for checkpoint in callback.manager.checkpoints:
        metrics = checkpoint.metrics
        print(
            f"  {checkpoint.commit_hash[:12]} epoch {checkpoint.epoch} step {checkpoint.step}: "
            f"eval_accuracy {metrics['eval_accuracy']:.3f}, eval_loss {metrics['eval_loss']:.4f}"
        )

    # 2. The best checkpoint, as a model.
    best = repo.show("bert-tiny/best")
    model = from_pretrained(BertForSequenceClassification, repo, "bert-tiny/best")
    print(f"best: {best.short_hash} eval_accuracy {best.metrics['eval_accuracy']:.3f}")
    print(f"restored {type(model).__name__} from {model.name_or_path}")

    # 3. Resume from the first checkpoint in a new Trainer; same end, bit for bit.
    first = callback.manager.checkpoints[0].commit_hash
    folder_for_trainer = checkout_checkpoint(repo, first, root / "resume-from")
    resumed, _ = trainer(Repository(root / "resumed-repo", init=True), root / "resumed-out")
    resumed.train(resume_from_checkpoint=str(folder_for_trainer))
    finished = run.model.state_dict()
    same = all(torch.equal(t, finished[n]) for n, t in resumed.model.state_dict().items())
    print(f"resumed from {first[:12]}; same final weights bit for bit: {same}")


if __name__ == "__main__":
    main(*sys.argv[1:])
