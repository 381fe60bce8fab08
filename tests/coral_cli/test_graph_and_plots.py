"""coral-ml log --graph (drawn as git draws it), diff --plot and experiment show --plot."""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coral_cli import plots
from coral_core import CheckpointConfig, CheckpointManager, Repository, TrainingState
from tests.coral_cli.test_cli import as_json, imported_by, run

# A fork from an older commit (side, from A), commits on both lines, a merge
# of side into main, and a fork left open (old, from B): (action, branch,
# name, the branches merged).
SHAPE = [
    ("commit", "main", "A"),
    ("commit", "main", "B"),
    ("branch", "side", "A"),
    ("commit", "side", "S1"),
    ("commit", "main", "C"),
    ("commit", "side", "S2"),
    ("merge", "main", "M", "side"),
    ("commit", "main", "D"),
    ("branch", "old", "B"),
    ("commit", "old", "O1"),
]

ONELINE = [
    "* O1",
    "| * D",
    "| *   M",
    "| |\\",
    "| | * S2",
    "| | * S1",
    "| * | C",
    "|/ /",
    "* / B",
    "|/",
    "* A",
]

# A model soup: two branches merged into main at once (an octopus merge).
SOUP = [
    ("commit", "main", "A"),
    ("branch", "b1", "A"),
    ("branch", "b2", "A"),
    ("commit", "b1", "X"),
    ("commit", "b2", "Y"),
    ("commit", "main", "B"),
    ("merge", "main", "SOUP", "b1", "b2"),
]
SOUP_ONELINE = ["*-.   SOUP", "|\\ \\", "| | * Y", "| * | X", "| |/", "* / B", "|/", "* A"]


def coral_history(path: Path, shape: list[tuple[str, ...]]) -> Repository:
    """``shape`` as a Coral repository: each commit changes its branch's own tensor."""
    repo = Repository(path, init=True)
    tips: dict[str, dict[str, np.ndarray]] = {"main": {}}  # each branch's weights
    at: dict[str, tuple[str, dict[str, np.ndarray]]] = {}  # name -> (commit, its weights)
    for number, (action, branch, name, *other) in enumerate(shape, start=1):
        if action == "branch":
            repo.create_branch(branch, at[name][0])
            tips[branch] = at[name][1]
            continue
        if action == "merge":
            commit = repo.merge(other, message=name)
            tips[branch] = {**tips[branch], **{o: tips[o][o] for o in other}}
        else:
            tips[branch] = {**tips[branch], branch: np.full(4, number, np.float32)}
            commit = repo.commit(name, weights=tips[branch], branch=branch)
        at[name] = commit.commit_hash, tips[branch]
    return repo


def git_log(path: Path, shape: list[tuple[str, ...]], *options: str) -> list[str] | None:
    """``git log --graph --all`` of ``shape`` built in a real git repository
    (a commit a second, in order, as Coral's came); None without git."""
    git = shutil.which("git")
    if git is None:
        return None
    path.mkdir()
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    env |= {f"GIT_{who}_NAME": "t" for who in ("AUTHOR", "COMMITTER")}
    env |= {f"GIT_{who}_EMAIL": "t@t" for who in ("AUTHOR", "COMMITTER")}

    def call(*args: str, date: str | None = None) -> str:
        dates = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else {}
        done = subprocess.run(
            [git, "-C", str(path), *args],
            env={**env, **dates},
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    call("init", "-q", "-b", "main")
    tree = call("write-tree")  # the empty tree: git's commits carry no files here
    tips: dict[str, str] = {}
    at: dict[str, str] = {}
    for number, (action, branch, name, *other) in enumerate(shape, start=1):
        if action == "branch":
            tips[branch] = at[name]
            continue
        parents = [tips[branch]] if branch in tips else []
        parents += [tips[o] for o in other]
        flags = [flag for parent in parents for flag in ("-p", parent)]
        date = f"{1_700_000_000 + number} +0000"
        tips[branch] = at[name] = call("commit-tree", tree, *flags, "-m", name, date=date)
    for branch, commit in tips.items():
        call("update-ref", f"refs/heads/{branch}", commit)
    out = subprocess.run(
        [git, "-C", str(path), "log", "--graph", "--all", "--no-color", *options],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.rstrip() for line in out.splitlines()]


def without_ids(lines: list[str]) -> list[str]:
    """``log --oneline`` lines with the commit id and its decoration cut out."""
    return [re.sub(r"[0-9a-f]{12}( \([^)]*\))?( \[[^\]]*\])? ", "", line) for line in lines]


def shape_of(lines: list[str]) -> list[tuple[str, str]]:
    """Each line's graph part and the first word of its text (git and Coral
    print different authors, dates and ids)."""
    found = []
    for line in lines:
        lanes = re.match(r"[|/\\_*. -]*", line)
        graph = lanes.group() if lanes else ""
        found.append((graph.rstrip(), (line[len(graph) :].split() or [""])[0]))
    return found


@pytest.mark.parametrize(("shape", "expected"), [(SHAPE, ONELINE), (SOUP, SOUP_ONELINE)])
def test_log_graph_joins_forks_at_their_parents_and_draws_merges_as_git_does(
    tmp_path: Path, shape: list[tuple[str, ...]], expected: list[str]
) -> None:
    coral_history(tmp_path / "coral", shape)
    where = ["-C", str(tmp_path / "coral")]
    drawn = without_ids(run(*where, "log", "--graph", "--oneline", "--all").stdout.splitlines())
    assert drawn == expected
    full = run(*where, "log", "--graph", "--all").stdout.splitlines()
    git = git_log(tmp_path / "git", shape, "--format=%s")
    if git is not None:
        assert git == expected  # what git itself draws for the same history
        medium = git_log(tmp_path / "git-medium", shape)
        assert medium is not None
        assert shape_of(full) == shape_of(medium)  # and with a commit's text beside it


def test_log_graph_in_full_and_in_topological_order(tmp_path: Path) -> None:
    coral_history(tmp_path, SHAPE)
    where = ["-C", str(tmp_path)]
    full = run(*where, "log", "--graph", "--all").stdout.splitlines()
    assert any(re.fullmatch(r"\| \|\\  Merge: [0-9a-f]{12} [0-9a-f]{12}", line) for line in full)
    assert "|/ /  Author: " in "\n".join(full)  # C's lane closes into B's below it
    in_order = [c["message"] for c in as_json(*where, "log", "--graph", "--all")]
    assert in_order == ["O1", "D", "M", "S2", "S1", "C", "B", "A"]  # git's --topo-order


def test_log_graph_joins_lines_across_commits_a_filter_hides(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    where = ["-C", str(tmp_path)]
    base = repo.commit("A", weights={"w": np.zeros(2)}, metrics={"acc": 0.9})
    hidden = repo.commit("B", weights={"w": np.ones(2)}, metrics={"acc": 0.1})
    repo.create_branch("side", hidden.commit_hash)
    repo.commit("C", weights={"w": np.full(2, 2.0)}, metrics={"acc": 0.9})
    repo.commit("S", weights={"w": np.full(2, 3.0)}, metrics={"acc": 0.8}, branch="side")
    options = ["log", "--graph", "--oneline", "--all", "--filter", "acc>0.5"]
    drawn = without_ids(run(*where, *options).stdout.splitlines())
    assert drawn == ["* S", "| * C", "|/", "* A"]  # both join A, through the hidden B
    cut = without_ids(run(*where, *options, "-n", "2").stdout.splitlines())
    assert cut == ["* S", "| * C", "|/"]  # as git -n 2: the lines close after the last
    assert [c["commit"] for c in as_json(*where, *options)][-1] == base.commit_hash


def png_size(path: Path) -> tuple[int, int]:
    """The width and height of a whole PNG file (its signature, header and end)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_diff_plot_has_a_log_scale_marks_inf_and_nan_and_warns_nothing(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    before = {
        "bias": np.zeros(8, np.float32),  # zero-initialised: any change is infinite
        "norm": np.ones(4, np.float32),
        "small": np.ones(16, np.float32),
        "outlier": np.ones(16, np.float32),
        "signed": np.zeros(4, np.float32),
        "same": np.ones(2, np.float32),
    }
    after = {
        **before,
        "bias": np.full(8, 0.01, np.float32),
        "norm": np.array([1, np.nan, 1, 1], np.float32),
        "small": np.full(16, 1.0001, np.float32),
        "outlier": np.full(16, 1000.0, np.float32),
        "signed": np.array([-0.0, 0, 0, 0], np.float32),  # other bits, the same value
    }
    a = repo.commit("a", weights=before).commit_hash
    b = repo.commit("b", weights=after).commit_hash
    chart_path = tmp_path / "change.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = run("-C", str(tmp_path), "diff", a, b, "--plot", str(chart_path))
    assert [str(w.message) for w in caught] == []
    assert f"wrote {chart_path}: 5 tensors, 1 marked inf, 1 marked NaN, 1 marked 0" in done.stdout
    width, height = png_size(chart_path)
    assert width > 400
    assert height > 200

    tensors: list[dict[str, Any]] = [
        {"name": "tiny", "relative_l2": 2e-6},
        {"name": "bias", "relative_l2": math.inf},
        {"name": "huge", "relative_l2": 3e3},
        {"name": "broken", "relative_l2": math.nan},
        {"name": "signed", "relative_l2": 0.0},
        {"name": "added", "relative_l2": None},  # no statistics: not drawn
    ]
    chart = plots.plot_changes(tensors, "t", tmp_path / "direct.png")
    assert chart == plots.ChangeChart(
        bars=["tiny", "huge"],
        infinite=["bias"],
        nan=["broken"],
        zero=["signed"],
        limits=(1e-7, 1e4),  # whole decades, half a decade clear of 2e-6 and 3e3 at least
    )
    png_size(tmp_path / "direct.png")


def test_diff_plot_with_nothing_changed_writes_no_chart(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    repo.commit("a", weights={"w": np.ones(4, np.float32)})
    target = tmp_path / "same.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = run("-C", str(tmp_path), "diff", "HEAD", "HEAD", "--plot", str(target))
    assert [str(w.message) for w in caught] == []
    assert f"no chart written to {target}: no tensor changed" in done.stdout
    assert not target.exists()


def test_diff_plot_keeps_the_largest_changes_of_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plots, "MAX_TENSORS", 3)
    tensors = [{"name": f"t{i}", "relative_l2": 10.0**-i} for i in range(6)]
    tensors.append({"name": "nan", "relative_l2": math.nan})
    chart = plots.plot_changes(tensors, "t", tmp_path / "many.png")
    assert (chart.bars, chart.nan, chart.left_out) == (["t0", "t1"], ["nan"], 4)
    assert chart.summary() == "3 tensors, 1 marked NaN, 4 smaller changes left out"


def experiment(repo: Repository) -> tuple[str, str]:
    """Run one of "exp" (4 checkpoints, best at step 20), then a second run
    resumed from step 20: it goes on a branch of its own. The run ids."""
    config = CheckpointConfig(max_checkpoints=1, save_on_best_metric="loss")
    first = CheckpointManager(repo, config, "exp", hyperparameters={"lr": 0.1})
    ids = []
    for step, loss, acc in ((1, 0.9, 0.5), (2, 0.5, 0.6), (3, 0.7, math.nan), (4, 0.6, 0.7)):
        metrics = {"loss": loss, "acc": acc, "epoch": step}  # the Trainer logs "epoch" too
        state = TrainingState(epoch=step, global_step=10 * step, metrics=metrics)
        ids.append(first.save({"w": np.full(8, step, np.float32)}, state).commit_hash)
    second = CheckpointManager(repo, config, "exp")
    second.resume_from(ids[1])
    for step, loss in ((3, 0.4), (4, 0.3)):
        state = TrainingState(epoch=step, global_step=10 * step, metrics={"loss": loss})
        second.save({"w": np.full(8, -step, np.float32)}, state)
    return first.run_id, second.run_id


def test_experiment_show_has_run_and_branch_columns_and_plots_the_curves(tmp_path: Path) -> None:
    one, two = experiment(Repository(tmp_path, init=True))
    where = ["-C", str(tmp_path)]
    shown = as_json(*where, "experiment", "show", "exp")
    assert [r["run"] for r in shown["runs"]] == [one, two]
    rows = [(c["run"], c["branch"], c["step"], c["weights"], c["best"]) for c in shown["items"]]
    assert rows == [
        (one, "main", 10, "pruned", False),
        (one, "main", 20, "kept", True),
        (one, "main", 30, "pruned", False),
        (one, "main", 40, "kept", False),
        (two, "main-from-step-20", 30, "pruned", False),
        (two, "main-from-step-20", 40, "kept", True),
    ]
    best = Repository(tmp_path).resolve("exp/best")  # the best over the runs, not the newest's
    assert (shown["best"], shown["best_value"]) == (best, 0.3)
    lines = run(*where, "experiment", "show", "exp").stdout.splitlines()
    assert lines[0] == f"exp: 2 runs, 3 of 6 checkpoints kept; the experiment's best: {best[:12]}"
    assert lines[2] == f"  run {two} on main-from-step-20: 1 of 2 kept; lr=0.1"
    columns = ["commit", "(*", "best)", "run", "branch", "epoch", "step", "weights", "acc", "loss"]
    assert lines[3].split() == columns  # one epoch column, though "epoch" is a metric too
    assert lines[-1].split()[1:] == [
        "*",
        two[-6:],
        "main-from-step-20",
        "4",
        "40",
        "kept",
        "-",
        "0.3",
    ]
    alone = run(*where, "experiment", "show", one).stdout.splitlines()
    assert alone[2].split() == ["commit", "(*", "best)", "epoch", "step", "weights", "acc", "loss"]

    curves = tmp_path / "curves.png"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = run(*where, "experiment", "show", "exp", "--plot", str(curves))
    assert [str(w.message) for w in caught] == []
    note = f"wrote {curves}: acc, loss over 6 checkpoints: 3 kept, 3 pruned, 2 best"
    assert note in done.stdout
    png_size(curves)
    chart = plots.plot_curves(
        shown["items"], ["acc", "loss"], {one: "1", two: "2"}, "exp", tmp_path / "again.png"
    )
    assert chart.points["best"] == [("acc", one, 20), ("loss", one, 20), ("loss", two, 40)]
    assert chart.points["pruned"] == [
        ("acc", one, 10),
        ("loss", one, 10),
        ("loss", one, 30),
        ("loss", two, 30),
    ]  # acc at step 30 was NaN: no point
    assert ("acc", one, 40) in chart.points["kept"]


def test_plots_without_matplotlib_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository(tmp_path, init=True)
    a = repo.commit("a", weights={"w": np.ones(4, np.float32)}).commit_hash
    b = repo.commit("b", weights={"w": np.full(4, 2, np.float32)}).commit_hash
    experiment(repo)
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # imports of it fail
    where = ["-C", str(tmp_path)]
    for args in (
        ["diff", a, b, "--plot", "d.png"],
        ["experiment", "show", "exp", "--plot", "c.png"],
    ):
        refused = run(*where, *args, ok=False)
        assert refused.exit_code == 1
        assert refused.stderr == "error: --plot needs matplotlib: pip install 'coral-cli[plot]'\n"
    assert not list(tmp_path.glob("*.png"))


def test_matplotlib_is_imported_only_to_draw(tmp_path: Path) -> None:
    repo = Repository(tmp_path, init=True)
    repo.commit("a", weights={"w": np.ones(4, np.float32)})
    experiment(repo)
    commands = [["log", "--graph"], ["diff", "HEAD~1"], ["experiment", "show", "exp"]]
    assert imported_by(commands, tmp_path) == []
