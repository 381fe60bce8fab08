"""The book's training examples: 01-readme.md "PyTorch Training Integration"
(run for its 100 epochs) and 02-introduction.md's CommitMetadata."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from coral_core import CheckpointConfig, CommitMetadata, Repository, TrainingState


def test_pytorch_training_integration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    from coral_torch import CoralTrainer

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    repo = Repository("./training_repo", init=True)
    config = CheckpointConfig(
        save_every_n_epochs=5,  # Regular saves
        save_on_best_metric="accuracy",  # Save when improving
        keep_best_n_checkpoints=3,  # Limit storage
        max_checkpoints=10,
    )
    trainer = CoralTrainer(model, repo, "training_session", config)
    printed: list[str] = []

    def checkpoint_callback(state: TrainingState, commit_hash: str) -> None:
        printed.append(f"Checkpoint saved! Epoch {state.epoch}, Loss: {state.loss:.4f}")

    trainer.register_checkpoint_callback(checkpoint_callback)
    generator = torch.Generator().manual_seed(1)
    batch = (16, 784)
    train_loader = [
        (torch.randn(batch, generator=generator), torch.randint(0, 10, (16,), generator=generator))
        for _ in range(2)
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(100):
        epoch_loss, epoch_acc = 0.0, 0.0
        for data, target in train_loader:
            optimizer.zero_grad()
            output = model(data)
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()
            acc = (output.argmax(1) == target).float().mean()
            trainer.step(loss=loss.item(), accuracy=acc.item())
            epoch_loss += loss.item() / len(train_loader)
            epoch_acc += acc.item() / len(train_loader)
        trainer.epoch_end(epoch, loss=epoch_loss, accuracy=epoch_acc)

    manager = trainer.manager
    kept = manager.checkpoints
    assert printed  # the callback saw each checkpoint
    assert len(manager.history) > 10
    assert len(kept) <= 10  # max_checkpoints: the cap on all that is kept
    best_three = sorted(manager.history, key=lambda c: -c.metrics["accuracy"])[:3]
    assert {c.commit_hash for c in best_three} <= {c.commit_hash for c in kept}
    recent_ten = {c.commit_hash for c in manager.history[-10:]}
    assert not {c.commit_hash for c in best_three} <= recent_ten  # so the cap is what holds
    trainer.load_checkpoint(load_best=True)
    best = manager.best
    assert best is not None
    restored = repo.get_all_weights(best.commit_hash)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, torch.from_numpy(restored[name].data.copy()))


def test_commit_metadata_as_the_book_writes_it() -> None:
    before = time.time()
    commit_metadata = CommitMetadata(
        message="Epoch 50: lr=0.001",
        author="user@example.com",
        metrics={"train_loss": 0.234, "val_accuracy": 0.923, "learning_rate": 0.001},
        tags=["experiment", "resnet50"],
        environment={"torch_version": "2.0.0", "cuda_version": "11.8", "gpu": "A100"},
    )
    assert before <= commit_metadata.timestamp <= time.time()  # recorded automatically
    assert commit_metadata.tags == ("experiment", "resnet50")
    assert commit_metadata.metrics["val_accuracy"] == 0.923


def test_fit_with_the_developer_guide_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """03-developer-guide.md: ``CoralTrainer(model, repo_path=..., config=config)``
    then ``trainer.fit(train_loader, val_loader, epochs=10)``: no optimizer given."""
    torch = pytest.importorskip("torch")
    from coral_torch import CoralTrainer

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    inputs, targets = torch.randn(64, 8), torch.randint(0, 3, (64,))
    train_loader = [(inputs[i : i + 16], targets[i : i + 16]) for i in range(0, 64, 16)]
    val_loader = [(inputs[:32], targets[:32])]
    config = CheckpointConfig(
        save_every_n_epochs=1,
        save_on_best_metric="val_loss",
        keep_best_n_checkpoints=3,
    )
    trainer = CoralTrainer(model, repo_path="./checkpoints", config=config)
    trainer.fit(train_loader, val_loader, epochs=10)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)  # made as the HF Trainer makes one
    manager = trainer.manager
    assert len(manager.history) == 10
    losses = [c.metrics["val_loss"] for c in manager.history]
    assert losses[-1] < losses[0]  # it trained
    assert manager.hyperparameters["optimizer"] == "AdamW"
    newest = Repository("./checkpoints").training_state(manager.history[-1].commit_hash)
    assert newest is not None
    assert newest.optimizer_state  # saved with the checkpoints
