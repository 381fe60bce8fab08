"""No code path unpickles untrusted data: a ``.pt`` file that would run code on
load is refused by ``load_torch_file`` and by ``coral-ml add``, and the code
never runs; no source file of a Coral package calls a pickle loader."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from coral_cli.main import cli
from coral_core import Repository, UnsafeModelFileError
from coral_torch import load_torch_file

ROOT = Path(__file__).resolve().parents[2]
UNSAFE_LOAD = """\
import pickle, sys, torch
from pathlib import Path
marker = Path(sys.argv[1])
for path in sys.argv[2:]:  # what an unwary user would run
    marker.unlink(missing_ok=True)
    if path.endswith(".bin"):
        pickle.loads(Path(path).read_bytes())
    else:
        torch.load(path, weights_only=False)
    print(marker.exists())
"""


class TouchOnLoad:
    """Unpickling this creates ``marker``: a stand-in for any code an attacker picks."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


class ShellOnLoad(TouchOnLoad):
    """The classic payload: ``os.system`` runs a shell command while loading."""

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (os.system, (f"touch {self.marker}",))


def malicious_files(folder: Path, marker: Path) -> list[Path]:
    """``.pt``/``.pth``/``.bin`` files whose loading would create ``marker``:
    torch's zip format with a tensor beside the payload, and a bare pickle."""
    zipped = folder / "model.pt"
    torch.save({"weight": torch.ones(3), "extra": TouchOnLoad(marker)}, zipped)
    shell = folder / "shell.pth"
    torch.save({"weight": torch.ones(3), "extra": ShellOnLoad(marker)}, shell)
    bare = folder / "legacy.bin"
    bare.write_bytes(pickle.dumps({"weight": TouchOnLoad(marker)}, protocol=2))
    return [zipped, shell, bare]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


def test_the_payloads_really_run_code_when_unpickled(tmp_path: Path, marker: Path) -> None:
    """The files below are real exploits: a full unpickle of each (in another
    process) creates the marker."""
    paths = [str(path) for path in malicious_files(tmp_path, marker)]
    ran = subprocess.run(
        [sys.executable, "-c", UNSAFE_LOAD, str(marker), *paths],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout.split() == ["True"] * len(paths)


def test_load_torch_file_refuses_code_running_pickles(tmp_path: Path, marker: Path) -> None:
    for path in malicious_files(tmp_path, marker):
        with pytest.raises(UnsafeModelFileError, match="weights_only"):
            load_torch_file(path)
    assert not marker.exists()


def test_coral_ml_add_refuses_them_and_stages_nothing(tmp_path: Path, marker: Path) -> None:
    repo = Repository(tmp_path / "repo", init=True)
    for path in malicious_files(tmp_path, marker):
        result = CliRunner().invoke(cli, ["-C", str(repo.path), "add", str(path)])
        assert result.exit_code != 0, result.output
        assert "weights_only" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not marker.exists()
    assert repo.staged().empty


# -- the source ----------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def unsafe_calls(tree: ast.AST) -> list[str]:
    """Calls that can unpickle: ``pickle.load(s)``/``Unpickler`` (and their
    look-alikes), ``torch.load`` without ``weights_only=True``, ``np.load``
    with ``allow_pickle`` other than False."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name, keywords = node.func.attr, {k.arg: k.value for k in node.keywords}
        flag = {key: getattr(value, "value", value) for key, value in keywords.items()}
        if owner in PICKLE_MODULES and name in {"load", "loads", "Unpickler", "open"}:
            found.append(f"{owner}.{name}")
        elif owner == "torch" and name == "load" and flag.get("weights_only") is not True:
            found.append("torch.load without weights_only=True")
        elif owner in {"np", "numpy"} and name == "load" and flag.get("allow_pickle", False):
            found.append("np.load with allow_pickle")
    return found


def test_no_source_file_calls_a_pickle_loader() -> None:
    sources = sorted(ROOT.glob("coral_*/src/coral_*/**/*.py"))
    assert len(sources) > 30  # the packages really were found
    offenders = {
        str(path.relative_to(ROOT)): calls
        for path in sources
        if (calls := unsafe_calls(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert offenders == {}


def test_the_source_check_catches_what_it_looks_for() -> None:
    code = (
        "pickle.loads(b)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "np.load(p, allow_pickle=True)\ntorch.load(p, weights_only=True)\nnp.load(p)\n"
    )
    assert unsafe_calls(ast.parse(code)) == [
        "pickle.loads",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "np.load with allow_pickle",
    ]
