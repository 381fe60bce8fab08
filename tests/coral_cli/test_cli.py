"""coral-ml: every command through CliRunner, a few through a real process, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from coral_cli.main import cli
from coral_core import (
    FORMAT_VERSION,
    CheckpointConfig,
    CheckpointManager,
    Repository,
    TrainingState,
    bit_view,
)
from coral_core.formats import read_safetensors, write_safetensors


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a repository and two versions of a small model as files."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    weights = {
        "enc.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "enc.bias": np.zeros(64, np.float32),
    }
    write_safetensors(tmp_path / "v1.safetensors", weights)
    weights["enc.weight"] = weights["enc.weight"] + np.float32(1e-3)
    write_safetensors(tmp_path / "v2.safetensors", weights)
    np.savez(tmp_path / "head.npz", **{"head.weight": np.ones((4, 64), np.float16)})
    assert run("init").exit_code == 0
    return tmp_path


def run(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output + result.stderr
    return result


def as_json(*args: str) -> Any:
    return json.loads(run("--json", *args).stdout)


def two_commits() -> tuple[str, str]:
    run("add", "v1.safetensors")
    first = as_json("commit", "-m", "first", "--metric", "val_accuracy=0.8")["commit"]
    run("add", "v2.safetensors", "head.npz")
    second = as_json("commit", "-m", "second", "--metric", "val_accuracy=0.9")["commit"]
    return first, second


def test_add_commit_log_show_ls_tree(workdir: Path) -> None:
    run("add", "v1.safetensors")
    status = as_json("status")
    assert status["branch"] == "main"
    assert status["staged"]["added"] == ["enc.bias", "enc.weight"]
    run("commit", "-m", "first", "--metric", "val_accuracy=0.8")
    run("add", "v2.safetensors", "head.npz")
    assert as_json("status")["staged"]["modified"] == ["enc.weight"]
    second = as_json("commit", "-m", "second", "--metric", "val_accuracy=0.9")["commit"]
    log = as_json("log")
    assert [c["message"] for c in log] == ["second", "first"]
    assert log[0]["commit"] == second
    assert log[0]["metrics"] == {"val_accuracy": 0.9}
    assert "second" in run("log", "--oneline").stdout
    assert [c["commit"] for c in as_json("log", "--filter", "val_accuracy>0.85")] == [second]
    assert len(as_json("log", "-n", "1")) == 1
    shown = as_json("show", "HEAD")
    assert shown["tensors"] == 3
    assert shown["parents"]
    assert "Tensors: 3" in run("show").stdout
    tree = {row["name"]: row for row in as_json("ls-tree")}
    assert tree["enc.bias"]["storage"] == "dedup"
    assert tree["enc.weight"]["storage"] in ("delta", "full")
    assert tree["head.weight"]["dtype"] == "float16"
    assert tree["head.weight"]["shape"] == [4, 64]
    assert "enc.weight" in run("ls-tree").stdout


def test_diff_compare_stats_and_the_plot(workdir: Path) -> None:
    first, second = two_commits()
    changes = as_json("diff", first, second)
    statuses = {t["name"]: t["status"] for t in changes["tensors"]}
    assert statuses == {"enc.bias": "unchanged", "enc.weight": "modified", "head.weight": "added"}
    modified = next(t for t in changes["tensors"] if t["name"] == "enc.weight")
    assert 0 < modified["relative_l2"] < 0.01
    assert "modified" in run("diff", first).stdout
    run("diff", first, second, "--plot", "change.png")
    assert (workdir / "change.png").read_bytes()[:4] == b"\x89PNG"
    compared = as_json("compare", first, second)
    assert compared["metrics"] == {"val_accuracy": [0.8, 0.9]}
    assert compared["tensors"]["added"] == 1
    stats = as_json("stats")
    assert stats["commits"] == 2
    assert stats["ratio"] > 1


def test_branches_tags_checkout_reflog(workdir: Path) -> None:
    first, _ = two_commits()
    run("tag", "v1", first, "-d", "the first", "--metric", "val_accuracy=0.8")
    tags = as_json("tag", "--list")
    assert tags == [
        {
            "name": "v1",
            "commit": first,
            "description": "the first",
            "metrics": {"val_accuracy": 0.8},
        }
    ]
    assert as_json("tag", "--list", "x*") == []
    run("branch", "experiment")
    assert {b["name"] for b in as_json("branch")} == {"main", "experiment"}
    run("checkout", "-b", "from-v1", "v1")
    assert as_json("status")["branch"] == "from-v1"
    run("checkout", "main")
    run("branch", "-d", "experiment")
    run("tag", "--delete", "v1")
    assert as_json("tag", "--list") == []
    moves = as_json("reflog")
    assert moves[0]["message"].startswith("checkout: moving from from-v1 to main")


def test_export_import_rm_reset(workdir: Path) -> None:
    _, second = two_commits()
    run("export", second, "out.safetensors")
    exported = read_safetensors(workdir / "out.safetensors")
    original = read_safetensors(workdir / "v2.safetensors")
    for name, array in original.items():
        assert np.array_equal(bit_view(exported[name]), bit_view(array))
    run("export", second, "folder")
    assert (workdir / "folder" / "model.safetensors").is_file()
    run("export", second, "out.npz")
    assert set(np.load(workdir / "out.npz").files) == set(exported)
    umask = os.umask(0o022)
    os.umask(umask)
    mode = 0o666 & ~umask  # what any new file gets
    for written in ("out.safetensors", "out.npz", "folder/model.safetensors"):
        assert (workdir / written).stat().st_mode & 0o777 == mode, written  # not 0600
    (workdir / "ckpts").mkdir()
    for i in range(3):
        write_safetensors(
            workdir / "ckpts" / f"step-{i}.safetensors", {"w": np.full(8, i, np.int32)}
        )
    imported = as_json("import", "ckpts", "--branch", "run")
    assert [c["message"] for c in imported] == [f"import step-{i}.safetensors" for i in range(3)]
    on_branch = [c["message"] for c in as_json("log", "run")]
    assert on_branch == [f"import step-{i}.safetensors" for i in (2, 1, 0)] + ["second", "first"]
    run("rm", "head.weight")
    assert as_json("status")["staged"]["removed"] == ["head.weight"]
    run("reset")
    assert as_json("status")["staged"]["removed"] == []


def test_config_verify_gc_repack(workdir: Path) -> None:
    two_commits()
    run("config", "user.name", "ada")
    assert as_json("config", "user.name") == {"user.name": "ada"}
    assert as_json("config", "--list")["core.format_version"] == FORMAT_VERSION
    assert as_json("verify")["ok"] is True
    assert as_json("gc", "--dry-run")["dry_run"] is True
    assert as_json("repack", "--max-chain-length", "3")["max_chain_length"] == 3
    bad = run("config", "core.chunk_size", "big", ok=False)
    assert bad.exit_code == 1
    assert "core.chunk_size" in bad.stderr


def test_experiments(workdir: Path) -> None:
    repo = Repository(workdir)
    for name, scale in (("lr-small", 1.0), ("lr-big", 2.0)):
        config = CheckpointConfig(branch=name)
        manager = CheckpointManager(repo, config, name)
        for step in range(1, 3):
            weights = {"w": np.full(4, step * scale, np.float32)}
            state = TrainingState(epoch=step, global_step=step * 10, metrics={"loss": 1 / step})
            manager.save(weights, state)
    listed = {e["experiment"]: e for e in as_json("experiment", "list")}
    assert listed["lr-big"]["checkpoints"] == 2
    assert listed["lr-big"]["last_step"] == 20
    shown = as_json("experiment", "show", "lr-small")
    assert [c["step"] for c in shown["items"]] == [10, 20]
    assert as_json("experiment", "show", listed["lr-small"]["run"])["run"] == shown["run"]
    compared = as_json("experiment", "compare", "lr-small", "lr-big")
    assert compared["metrics"]["loss"] == {"lr-small": 0.5, "lr-big": 0.5}
    missing = run("experiment", "show", "nope", ok=False)
    assert missing.exit_code == 1
    assert "lr-big" in missing.stderr


def test_bad_input_is_one_line_exit_1_and_changes_nothing(workdir: Path) -> None:
    two_commits()
    before = sorted(p.name for p in (workdir / ".coral" / "objects").rglob("*"))
    head = as_json("log", "-n", "1")[0]["commit"]
    (workdir / "short.safetensors").write_bytes((workdir / "v1.safetensors").read_bytes()[:100])
    (workdir / "notes.txt").write_text("hello")
    (workdir / "fake.safetensors").write_text("not a model at all")
    cases = [
        (("show", "no-such-ref"), "no-such-ref"),
        (("add", "missing.safetensors"), "missing.safetensors"),
        (("add", "short.safetensors"), "short.safetensors"),
        (("add", "fake.safetensors"), "fake.safetensors"),
        (("add", "notes.txt"), ".txt"),
        (("add", "v1.safetensors", "v2.safetensors"), "--prefix"),
        (("checkout", "nowhere"), "nowhere"),
        (("diff", "HEAD", "nope"), "nope"),
    ]
    for args, named in cases:
        result = run(*args, ok=False)
        assert result.exit_code == 1, args
        assert result.stderr.count("\n") == 1, result.stderr
        assert named in result.stderr, (args, result.stderr)
    usage = run("commit", ok=False)  # -m is required
    assert usage.exit_code == 2
    assert run("log", "--filter", "val_accuracy~1", ok=False).exit_code == 2
    assert as_json("log", "-n", "1")[0]["commit"] == head
    assert as_json("status")["staged"] == {"added": [], "modified": [], "removed": []}
    assert sorted(p.name for p in (workdir / ".coral" / "objects").rglob("*")) == before


def test_outside_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("log", ok=False)
    assert result.exit_code == 1
    assert "coral-ml init" in result.stderr
    (tmp_path / "project" / "sub").mkdir(parents=True)
    run("init", "project")
    monkeypatch.chdir(tmp_path / "project" / "sub")
    assert as_json("status")["branch"] == "main"  # found from a folder below


def coral_ml(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "coral-ml"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "coral_cli.main"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True)


def test_real_process_exit_codes_and_no_framework_imports(tmp_path: Path) -> None:
    assert coral_ml("init", cwd=tmp_path).returncode == 0
    helped = coral_ml("--help", cwd=tmp_path)
    assert helped.returncode == 0
    assert "ls-tree" in helped.stdout
    missing = coral_ml("show", "nope", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ")
    assert coral_ml("no-such-command", cwd=tmp_path).returncode == 2
    write_safetensors(tmp_path / "m.safetensors", {"w": np.ones(4, np.float32)})
    for step in (["add", "m.safetensors"], ["commit", "-m", "one"]):
        assert coral_ml(*step, cwd=tmp_path).returncode == 0
    # the commands people run all day import no framework (torch alone takes seconds)
    daily = [["--help"], ["log"], ["status"], ["show", "HEAD"], ["diff", "HEAD", "HEAD"]]
    assert imported_by([*daily, ["log", "--graph"], ["stats"]], tmp_path) == []


#: Modules that take seconds to import, or belong to one framework.
HEAVY = (
    "torch", "tensorflow", "keras", "transformers", "mlflow", "matplotlib", "h5py",
    "coral_torch", "coral_tf", "coral_hf", "coral_lightning",
)  # fmt: skip


def imported_by(commands: list[list[str]], cwd: Path) -> list[str]:
    """The :data:`HEAVY` modules a new process running ``commands`` imported
    (warnings are errors there)."""
    probe = (
        "import contextlib, json, sys; from coral_cli.main import cli\n"
        f"for argv in {commands!r}:\n"
        "    with contextlib.suppress(SystemExit): cli.main(argv, prog_name='coral-ml')\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stdout + out.stderr
    imported: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return imported


def test_merge_and_the_graph(workdir: Path) -> None:
    first, _ = two_commits()
    run("checkout", "-b", "side", first)
    write_safetensors(workdir / "side.safetensors", {"enc.weight": np.ones((64, 32), np.float32)})
    run("add", "side.safetensors")
    run("commit", "-m", "side change")
    run("checkout", "main")
    conflict = run("merge", "side", ok=False)
    assert conflict.exit_code == 1
    assert "enc.weight" in conflict.stderr
    done = as_json("merge", "side", "--strategy", "weighted", "--alpha", "0.25")
    assert done["merge"]["strategy"] == "weighted"
    assert done["merge"]["options"]["alpha"] == 0.25
    assert len(as_json("show")["parents"]) == 2
    graph = run("log", "--graph", "--oneline").stdout.splitlines()
    assert graph[0].startswith("* ")
    assert any(line.startswith("| * ") for line in graph)  # the side branch beside main
    assert run("merge", "side").stdout.strip() == "already up to date"
    assert run("merge", "side", "--weights", "a,b", ok=False).exit_code == 2
    run("checkout", "-b", "apart")  # at HEAD, as git
    assert as_json("status")["branch"] == "apart"
    write_safetensors(workdir / "new.safetensors", {"new.weight": np.ones(3, np.float32)})
    run("add", "new.safetensors")
    run("commit", "-m", "apart only")
    run("checkout", "main")
    write_safetensors(workdir / "main.safetensors", {"main.weight": np.ones(2, np.float32)})
    run("add", "main.safetensors")
    run("commit", "-m", "main only")
    clean = run("merge", "apart").stdout.strip()  # the default strategy, fail, had nothing to do
    assert clean.endswith("] merged: no tensor changed on both sides"), clean


def test_dash_c_finds_the_repository_above_the_folder_as_git(workdir: Path) -> None:
    two_commits()
    deep = workdir / "sub" / "deeper"
    deep.mkdir(parents=True)
    assert [c["message"] for c in as_json("-C", str(deep), "log")] == ["second", "first"]
    made = as_json("-C", str(workdir / "other"), "init")
    assert made["path"] == str((workdir / "other").absolute())


def test_remotes_push_clone_pull_sync(workdir: Path) -> None:
    two_commits()
    run("tag", "v1")
    run("remote", "add", "origin", str(workdir / "shared"))
    assert as_json("remote", "list") == {"origin": str(workdir / "shared")}
    pushed = as_json("push", "--tags")
    assert pushed["objects"] > 0
    assert set(pushed["refs"]) == {"refs/heads/main", "refs/tags/v1"}
    assert as_json("push")["objects"] == 0
    run("clone", str(workdir / "shared"), str(workdir / "copy"))
    copy = ["-C", str(workdir / "copy")]
    assert [c["message"] for c in as_json(*copy, "log")] == ["second", "first"]
    write_safetensors(workdir / "v3.safetensors", {"enc.bias": np.ones(64, np.float32)})
    run(*copy, "add", str(workdir / "v3.safetensors"))
    run(*copy, "commit", "-m", "third")
    run(*copy, "push")
    status = {r["branch"]: r for r in as_json("sync-status")}
    assert status["main"]["ahead"] is None  # the remote's new commit is not here yet
    run("fetch")
    status = {r["branch"]: r for r in as_json("sync-status")}
    assert (status["main"]["ahead"], status["main"]["behind"]) == (0, 1)
    pulled = as_json("pull")
    assert pulled["head"] == as_json(*copy, "log", "-n", "1")[0]["commit"]
    run("branch", "side")
    assert "refs/heads/side" in as_json("sync")["refs"]
    behind = run(*copy, "push", ok=False)  # nothing to push: fine
    assert behind.exit_code == 0
    run("remote", "remove", "origin")
    missing = run("push", ok=False)
    assert missing.exit_code == 1
    assert "coral-ml remote add" in missing.stderr


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_publish_to_mlflow(workdir: Path) -> None:
    pytest.importorskip("mlflow", reason="mlflow is not installed")
    _, second = two_commits()
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    artifacts = (workdir / "artifacts").as_uri()
    options = ["--to", "mlflow", "--name", "tiny", "--tracking-uri", tracking]
    first = as_json("publish", "HEAD~1", *options, "--artifact-location", artifacts)
    again = as_json("publish", *options)
    assert (first["version"], again["version"]) == ("1", "2")
    assert again["commit"] == second
    assert run("publish", "--to", "mlflow", ok=False).exit_code == 2  # --name is needed


def test_pruned_checkpoints_pins_runs_and_shallow_clones(workdir: Path) -> None:
    first, second = two_commits()
    repo = Repository(workdir)
    config = CheckpointConfig(max_checkpoints=1, save_on_best_metric="loss")
    manager = CheckpointManager(repo, config, "sweep", hyperparameters={"lr": 0.1})
    ids = []
    for step in range(1, 5):
        state = TrainingState(epoch=step, global_step=step, metrics={"loss": abs(step - 2.0)})
        ids.append(manager.save({"w": np.full(256, step, np.float32)}, state).commit_hash)
    oneline = run("log", "--oneline").stdout
    assert oneline.count("[pruned: weights gone]") == 2  # steps 1 and 3; 2 is best, 4 newest
    weights = [c["weights"] for c in as_json("log")]
    assert weights == ["kept", "pruned", "kept", "pruned", "kept", "kept"]
    assert "pruned" in run("show", ids[0]).stdout
    refused = run("export", ids[0], "w.safetensors", ok=False)
    assert refused.exit_code == 1
    assert "pruned" in refused.stderr
    assert ids[1][:12] in refused.stderr  # the nearest kept checkpoint
    compared = as_json("compare", ids[0], ids[3])
    assert compared["weights_gone"] == [ids[0]]
    assert compared["metrics"]["loss"] == [1.0, 2.0]
    assert "only metrics" in run("diff", ids[0], ids[3]).stdout
    (listed,) = as_json("experiment", "list")
    assert (listed["experiment"], listed["kept"], listed["checkpoints"]) == ("sweep", 2, 4)
    assert listed["best_value"] == 0.0
    assert listed["hyperparameters"] == {"lr": 0.1}
    assert "2/4" in run("experiment", "list").stdout
    shown = as_json("experiment", "show", listed["run"])
    assert [(c["weights"], c["best"]) for c in shown["items"]] == [
        ("pruned", False),
        ("kept", True),
        ("pruned", False),
        ("kept", False),
    ]
    assert as_json("show", "sweep/best")["commit"] == ids[1]

    run("pin", "sweep/last")
    assert [p["commit"] for p in as_json("pin")] == [ids[3]]
    state = TrainingState(epoch=5, global_step=5, metrics={"loss": 3.0})
    manager.save({"w": np.full(256, 5, np.float32)}, state)
    assert as_json("show", ids[3])["weights"] == "kept"  # the pin holds it
    run("unpin", ids[3])
    assert run("unpin", ids[3], ok=False).exit_code == 1
    assert as_json("stats")["pruned_commits"] == 3

    run("remote", "add", "origin", str(workdir / "remote"))
    run("push", "origin")
    assert as_json("gc", "--remote", "origin")["dry_run"] is False
    cloned = as_json("clone", "--depth", "1", str(workdir / "remote"), "shallow")
    assert cloned["bytes"] > 0
    shallow = Repository(workdir / "shallow")
    assert len(shallow.log()) == 7
    assert [shallow.weights_status(c) for c in (first, second)] == ["shallow", "shallow"]
    assert shallow.weights_status(ids[1]) == "kept"  # the run's best came: a pointer's tip
    assert run("-C", "shallow", "log", "--oneline").stdout.count("[shallow") == 2
    run("-C", "shallow", "fetch", "origin", "--deepen", "1")
    assert [shallow.weights_status(c) for c in (first, second)] == ["shallow", "kept"]
    run("-C", "shallow", "fetch", "origin", "--unshallow")
    assert shallow.weights_status(first) == "kept"
    run("-C", "shallow", "branch", "topic")
    run("-C", "shallow", "push", "origin", "topic")
    deleted = as_json("-C", "shallow", "push", "origin", "--delete", "topic")
    assert deleted["refs"]["refs/heads/topic"]["new"] is None


def test_global_options_after_the_command_and_an_honest_stats_ratio(workdir: Path) -> None:
    two_commits()
    assert json.loads(run("log", "--json").stdout) == json.loads(run("--json", "log").stdout)
    assert (
        json.loads(run("log", "-C", str(workdir), "--json", "-n", "1").stdout)[0]["message"]
        == "second"
    )
    assert json.loads(run("experiment", "list", "--json").stdout) == []
    assert run("status", "-q").stdout == ""
    repo = Repository(workdir)
    manager = CheckpointManager(repo, CheckpointConfig(), "opt")
    for step in range(1, 4):  # Adam-like moments: as large as the weights, twice
        weights = {"w": np.full(4096, step, np.float32)}
        state = TrainingState(epoch=step, global_step=step)
        state.optimizer_state = {
            "m": np.full(4096, step / 10, np.float32),
            "v": np.ones(4096, np.float32),
        }
        manager.save(weights, state)
    stats = json.loads(run("stats", "--json").stdout)
    assert stats["ratio"] > 1  # training state counts on both sides
