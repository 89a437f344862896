"""One run at a time in an output folder, and files a crash cannot leave half-written.

A run holds its folder's lock from before the folder checks to its end: a second start is
refused, naming the folder and the process that holds it; a lock left by a process that died
is taken over with a warning; the lock goes away however the run ends, and nothing else in the
folder is touched. The JSON files a run writes are replaced whole or not at all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from scratchformers.training import Recipe, parse_settings, rundir, train
from scratchformers.training.rundir import LOCK_FILE, OutputDirInUse, RunLock, write_json

FAST = ("--max-steps", "4", "--save-every", "2", "--eval-every", "4")
HOLD = (
    "import sys, time\n"
    "from scratchformers.training.rundir import RunLock\n"
    "RunLock(sys.argv[1]).acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(300)\n"
)


def dead_pid() -> int:
    """The number of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def lock_record(pid: int, host: str | None = None) -> str:
    return json.dumps(
        {
            "pid": pid,
            "host": host or socket.gethostname(),
            "started": "2026-01-02T03:04:05+00:00",
            "command": "scratchformers train toy",
        }
    )


def test_a_second_start_is_refused_naming_the_folder_and_the_process_holding_it(
    run_train: Callable[..., int],
    recipe: Recipe,
    corpus: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("mine")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(output_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        argv = ["--dataset", str(corpus), "--output-dir", str(output_dir), *FAST]
        assert run_train(recipe, argv) == 2
        err = capsys.readouterr().err
        assert (
            f"error: --output-dir {output_dir} is in use by another run: process {holder.pid} "
            f"on {socket.gethostname()}, started " in err
        ), err
        assert "wait for it to end, or choose another --output-dir" in err
        with pytest.raises(OutputDirInUse, match=f"process {holder.pid} on "):
            train(recipe, parse_settings(recipe, argv))
        assert sorted(p.name for p in output_dir.iterdir()) == [LOCK_FILE, "notes.txt"]
    finally:
        holder.kill()
        holder.wait()
    # Killed, its process cannot remove the file: the next run takes the lock over, says so,
    # and leaves no lock behind.
    assert run_train(recipe, argv) == 0
    out = capsys.readouterr().out
    assert f"{LOCK_FILE} was left by process {holder.pid} on " in out
    assert "which no longer runs; taking it over" in out
    assert not (output_dir / LOCK_FILE).exists()
    assert (output_dir / "notes.txt").read_text() == "mine"


def test_a_lock_file_naming_a_live_process_is_respected(tmp_path: Path) -> None:
    """A record alone (no flock behind it) still stops a run while its process lives: it may
    be a run on a file system without flock."""
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (output_dir / LOCK_FILE).write_text(lock_record(sleeper.pid))
        with pytest.raises(OutputDirInUse) as refused:
            RunLock(output_dir).acquire()
        message = str(refused.value)
        assert f"--output-dir {output_dir} is locked by process {sleeper.pid} on " in message
        assert f"delete {output_dir / LOCK_FILE}" in message
    finally:
        sleeper.kill()
        sleeper.wait()
    # Another machine's process cannot be checked from here: refused, whether it runs or not.
    (output_dir / LOCK_FILE).write_text(lock_record(dead_pid(), host="elsewhere"))
    with pytest.raises(OutputDirInUse, match="check on elsewhere"):
        RunLock(output_dir).acquire()
    assert json.loads((output_dir / LOCK_FILE).read_text())["host"] == "elsewhere"


def test_a_stale_lock_is_taken_over_with_a_warning_and_given_up_after_use(tmp_path: Path) -> None:
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    pid = dead_pid()
    (output_dir / LOCK_FILE).write_text(lock_record(pid))
    warnings: list[str] = []
    with RunLock(output_dir, warn=warnings.append):
        assert len(warnings) == 1 and f"left by process {pid} on " in warnings[0]
        assert json.loads((output_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
        # The command takes the lock, then the loop's train() again: the same process nests.
        with RunLock(output_dir):
            pass
        assert (output_dir / LOCK_FILE).exists()
    assert list(output_dir.iterdir()) == []


def test_the_lock_is_given_up_on_an_error_or_ctrl_c_and_an_empty_new_folder_goes_too(
    run_train: Callable[..., int],
    recipe: Recipe,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output_dir = tmp_path / "new" / "run"
    with pytest.raises(KeyboardInterrupt), RunLock(output_dir):
        assert (output_dir / LOCK_FILE).exists()
        raise KeyboardInterrupt
    assert not (tmp_path / "new").exists(), "the folders the lock created, still empty, went"

    # A run that stops on bad data, in a folder of the user's: the folder is as it was.
    output_dir.mkdir(parents=True)
    (output_dir / "notes.txt").write_text("mine")
    locked_while_running: list[bool] = []

    def bad_data(self: Recipe, settings: object) -> None:
        locked_while_running.append((output_dir / LOCK_FILE).exists())
        raise ValueError("the data is bad")

    monkeypatch.setattr(type(recipe), "build_data", bad_data)
    argv = ["--dataset", str(corpus), "--output-dir", str(output_dir)]
    assert run_train(recipe, argv) == 2
    assert locked_while_running == [True]
    assert [p.name for p in output_dir.iterdir()] == ["notes.txt"]


def test_only_the_main_process_of_a_launch_takes_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    with RunLock(tmp_path / "run"):
        assert not (tmp_path / "run").exists()


def test_a_failed_write_leaves_the_previous_json_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "run.json"
    write_json(path, {"steps": 1})

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    for failing in ("fsync", "replace"):
        with monkeypatch.context() as patch:
            patch.setattr(rundir.os, failing, disk_full)
            with pytest.raises(OSError, match="No space left"):
                write_json(path, {"steps": 2, "more": "x" * 100_000})
        assert json.loads(path.read_text()) == {"steps": 1}, failing
        assert [p.name for p in folder.iterdir()] == ["run.json"], "no temporary file left"
    write_json(path, {"steps": 2})
    assert json.loads(path.read_text()) == {"steps": 2}


def test_a_run_that_fails_writing_its_summary_keeps_the_run_json_it_had(
    recipe: Recipe, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output_dir = tmp_path / "run"
    real_replace = os.replace
    writes: list[str] = []

    def replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
        if Path(target).name == "run.json":
            writes.append(str(target))
            if len(writes) == 2:  # the summary at the end; the first is the run's start
                raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(rundir.os, "replace", replace)
    argv = ["--dataset", str(corpus), "--output-dir", str(output_dir), *FAST]
    with pytest.raises(OSError, match="No space left"):
        train(recipe, parse_settings(recipe, argv))
    run = json.loads((output_dir / "run.json").read_text())
    assert run["segments"][0]["status"] == "running" and "summary" not in run
    assert not list(output_dir.glob(".run.json.*")) and not (output_dir / LOCK_FILE).exists()
