"""Commands of a framework come from the framework's package.

``publish --to hf`` and ``import hf://...`` need coral-hf, which coral-cli
does not depend on: coral-hf declares what they call under the entry point
group ``coral.cli`` (``hub = "coral_hf.hub"``), and the CLI loads it only
when such a command runs, or names the package to install.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from coral_core import ConfigError

#: Entry point group of the CLI's framework plugins.
CLI_GROUP = "coral.cli"
#: Each plugin's name, the package that provides it and what it is for.
PLUGIN_PACKAGES = {"hub": ("coral-hf", "publishing to or importing from the Hugging Face Hub")}


def cli_plugin(name: str) -> Any:
    """The object the ``coral.cli`` entry point ``name`` names (a module).

    Raises:
        ConfigError: naming the package to install when none provides it.
    """
    for entry in entry_points(group=CLI_GROUP, name=name):
        return entry.load()
    package, purpose = PLUGIN_PACKAGES[name]
    raise ConfigError(f"{purpose} needs {package}: pip install {package}")
