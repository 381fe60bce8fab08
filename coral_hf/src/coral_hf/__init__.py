"""Coral for Hugging Face: Trainer checkpoints as commits, save/from_pretrained, Hub and MLflow."""

__version__ = "0.1.0"

from coral_hf.callback import CoralTrainerCallback, checkout_checkpoint
from coral_hf.hub import HubCommit, import_folder, import_from_hub, model_card, publish_to_hub
from coral_hf.pretrained import FILES_KEY, from_pretrained, save_pretrained, write_model_folder

__all__ = [
    "FILES_KEY",
    "CoralTrainerCallback",
    "HubCommit",
    "checkout_checkpoint",
    "from_pretrained",
    "import_folder",
    "import_from_hub",
    "model_card",
    "publish_to_hub",
    "save_pretrained",
    "write_model_folder",
]
