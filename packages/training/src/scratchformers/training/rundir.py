"""The output folder of a run: checked before any work, and never emptied unless asked.

A folder that holds an earlier run is left exactly as it is unless the command says what to
do with it: ``--resume`` continues that run, ``--overwrite`` starts over (deleting the old
checkpoints and metrics, which would otherwise mix with the new run's). A folder that cannot
take the run (a file, a folder that cannot be written, another model's folder) is refused
before the data is built, so that no time is lost on a run that could not be saved.

One run at a time: the main process of a run holds the folder's lock (:class:`RunLock`) from
before these checks until the run ends, so a second start into the same folder is refused,
naming the process that holds it, instead of both passing the checks and writing over each
other. The JSON files a run writes go through :func:`write_json`, which replaces a file
whole or not at all.

This module imports neither torch nor Accelerate: the command runs these checks first.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .console import is_main_process, status

try:
    import fcntl
except ImportError:  # Windows: the lock file's process record is the only check there
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .settings import TrainingSettings

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
# What a run writes that a new run in the same folder would mix with: --overwrite removes it.
RUN_ARTIFACTS = (CHECKPOINTS, "tensorboard", "metrics.jsonl", "loss_curve.png")
# Held by the run writing into the folder; removed when it ends (see RunLock).
LOCK_FILE = ".scratchformers-run.lock"


def run_identity(settings: TrainingSettings) -> dict[str, Any]:
    """What makes two runs the same model: a resume must match it, a new run may not mix."""
    return {"recipe": settings.recipe, "model": settings.model}


def check_output_dir(settings: TrainingSettings) -> None:
    """Raise a ``ValueError`` (one line, naming the folder and the flag to use) when the run
    cannot write into ``settings.output_dir`` or would lose what is there."""
    output_dir = settings.output_dir
    _check_writable(output_dir)
    run_file = output_dir / RUN_FILE
    if not run_file.is_file():
        if (output_dir / "config.json").is_file() or (output_dir / CHECKPOINTS).is_dir():
            raise ValueError(
                f"--output-dir {output_dir} holds a model that scratchformers did not train; "
                "choose another --output-dir"
            )
        return
    try:
        previous = json.loads(run_file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{run_file} is unreadable ({error}); choose another --output-dir, or --overwrite "
            "to start over there"
        ) from error
    if settings.overwrite:
        return
    same_model = {"recipe": previous.get("recipe"), "model": previous.get("model")}
    if same_model != run_identity(settings):
        raise ValueError(
            f"--output-dir {output_dir} holds a different model (recipe "
            f"{previous.get('recipe')!r}, preset {previous.get('preset')!r}, other model "
            "options); choose another --output-dir, or --overwrite to replace it"
        )
    if not settings.resume:
        raise ValueError(
            f"--output-dir {output_dir} holds an earlier run ({_progress(previous, output_dir)});"
            " add --resume to continue it, or --overwrite to start over"
        )
    changed = {
        key: value
        for key, value in settings.recipe_options.items()
        if key in previous.get("recipe_options", {}) and previous["recipe_options"][key] != value
    }
    if changed:
        flags = ", ".join(
            f"--{key.replace('_', '-')} {previous['recipe_options'][key]!r} (now {value!r})"
            for key, value in changed.items()
        )
        raise ValueError(f"--resume continues a run trained with {flags}; give the same values")


def _check_writable(output_dir: Path) -> None:
    for folder in (output_dir, *output_dir.parents):
        if folder.exists():
            break
    if not folder.is_dir():
        what = "is a file" if folder == output_dir else f"is inside {folder}, which is a file"
        raise ValueError(f"--output-dir {output_dir} {what}; choose a folder")
    # Writing a file is the only test that holds for root, read-only mounts and ACLs alike.
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(
            f"--output-dir {output_dir} cannot be written ({folder}: {error.strerror})"
        ) from error


def _progress(previous: dict[str, Any], output_dir: Path) -> str:
    """How far the earlier run got, for the message that asks what to do with it."""
    summary = previous.get("summary")
    if summary:
        return f"finished, {summary.get('steps')} steps"
    steps = sorted(
        int(path.name.removeprefix(CHECKPOINT_PREFIX))
        for path in (output_dir / CHECKPOINTS).glob(f"{CHECKPOINT_PREFIX}*")
        if path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
    )
    return f"checkpoint at step {steps[-1]}" if steps else "no checkpoint yet"


def clear_previous_run(output_dir: Path, recipe_files: tuple[str, ...] = ()) -> None:
    """For ``--overwrite``: remove the earlier run's checkpoints, logs and plot, and the
    ``recipe_files`` its recipe wrote (``Recipe.output_files``)."""
    for name in (*RUN_ARTIFACTS, *recipe_files):
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_json(path: Path, data: Any, *, ensure_ascii: bool = True) -> None:
    """Write ``data`` to ``path`` as indented JSON, atomically: into a new file beside it,
    flushed to the disk, then renamed over ``path``. A run killed or a disk filled mid-write
    leaves the previous file whole (or none), never half of the new one."""
    write_text_atomically(path, json.dumps(data, indent=2, ensure_ascii=ensure_ascii) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path``'s content by ``text`` whole or not at all (see :func:`write_json`)."""
    # A name of our own in the same folder (os.replace cannot cross file systems), created
    # as a new file so that it gets the folder's usual permissions, unlike mkstemp's 0600.
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class OutputDirInUse(ValueError):
    """Another run holds the output folder's lock; the message names the folder and the
    process (pid, host, start time, command)."""


@dataclass(frozen=True)
class LockHolder:
    """The process that holds (or held) a run lock, as its lock file records it."""

    pid: int
    host: str
    started: str
    command: str = ""

    @classmethod
    def this_process(cls) -> LockHolder:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=datetime.now(UTC).isoformat(timespec="seconds"),
            command=shlex.join(sys.argv),
        )

    def describe(self) -> str:
        said = f"process {self.pid} on {self.host}, started {self.started}"
        return f"{said} ({self.command})" if self.command else said


# The locks this process holds, by lock file: a nested RunLock on the same folder (the command
# holds it, then the loop's train() takes it again) only counts up.
_HELD: dict[Path, int] = {}


class RunLock:
    """The lock on a run's output folder, held by one run at a time (a context manager).

    A file, :data:`LOCK_FILE`, in the output folder, locked with ``flock`` (which the system
    releases when its process dies, however it dies) and holding a JSON record of its process
    (:class:`LockHolder`), so that a second start is refused naming it. A lock file whose
    process has died without removing it (killed, or a machine that went down) is stale: when
    its record names a process of this host that no longer runs, the next run takes it over
    with a warning. A record from another host is not taken over, since this machine cannot
    tell whether that process still runs: the refusal says which file to delete if it does not.

    Taking the lock creates the output folder; releasing it removes the lock file, and the
    folders it created when they are still empty. Only the launch's main process takes it
    (``main_process``, by default read from the launcher's environment); the others do
    nothing. Where there is no ``flock`` (Windows) only the record is checked.
    """

    def __init__(
        self,
        output_dir: Path,
        warn: Callable[[str], None] = status,
        main_process: bool | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.path = (self.output_dir / LOCK_FILE).absolute()
        self.warn = warn
        self.active = is_main_process() if main_process is None else main_process
        self._descriptor: int | None = None
        self._created: list[Path] = []
        self._nested = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise :class:`OutputDirInUse` naming its holder (a
        ``ValueError`` naming the folder when it cannot be written)."""
        if not self.active:
            return
        if self.path in _HELD:
            _HELD[self.path] += 1
            self._nested = True
            return
        _check_writable(self.output_dir)
        self._created = [
            folder for folder in (self.output_dir, *self.output_dir.parents) if not folder.exists()
        ]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._descriptor = self._lock()
        except BaseException:
            self._remove_created_folders()
            raise
        _HELD[self.path] = 1

    def release(self) -> None:
        """Give the lock up: its file removed, and the folders that taking it created, when
        nothing else was written into them."""
        if not self.active:
            return
        if self._nested:
            _HELD[self.path] -= 1
            self._nested = False
            return
        if self._descriptor is None:
            return
        try:
            # Removed while still locked, and only if it is still ours: the next run then
            # creates a new file rather than locking this one after it is gone.
            if _same_file(self._descriptor, self.path):
                self.path.unlink()
        finally:
            os.close(self._descriptor)
            self._descriptor = None
            del _HELD[self.path]
            self._remove_created_folders()

    def _lock(self) -> int:
        """Open and lock the lock file; its descriptor, holding this process's record."""
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not _flock(descriptor):
                    holder = _read_holder(descriptor, wait=True)
                    who = holder.describe() if holder else "a process that has not named itself yet"
                    raise OutputDirInUse(
                        f"--output-dir {self.output_dir} is in use by another run: {who}; "
                        "wait for it to end, or choose another --output-dir"
                    )
                if not _same_file(descriptor, self.path):
                    os.close(descriptor)  # its holder removed it as it ended: take the new one
                    continue
                self._check_stale(_read_holder(descriptor))
                record = json.dumps(asdict(LockHolder.this_process()), indent=2) + "\n"
                os.ftruncate(descriptor, 0)
                os.lseek(descriptor, 0, os.SEEK_SET)
                os.write(descriptor, record.encode())
                os.fsync(descriptor)
                return descriptor
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(descriptor)
                raise

    def _check_stale(self, holder: LockHolder | None) -> None:
        """A record left in an unlocked file: take it over with a warning when its process
        is known to be gone, else refuse, naming the process and the file."""
        if holder is None:
            return
        # Our own pid in a record we did not write: a dead run's, whose number this process
        # got again (a container's processes start from the same few numbers).
        if holder.host == socket.gethostname() and (
            holder.pid == os.getpid() or not _is_running(holder.pid)
        ):
            self.warn(
                f"warning: {self.path} was left by {holder.describe()}, which no longer runs; "
                "taking it over"
            )
            return
        where = "this machine" if holder.host == socket.gethostname() else holder.host
        raise OutputDirInUse(
            f"--output-dir {self.output_dir} is locked by {holder.describe()}; wait for it to "
            f"end, or choose another --output-dir. If that process is not a run in this folder "
            f"(check on {where}), delete {self.path}"
        )

    def _remove_created_folders(self) -> None:
        for folder in self._created:  # deepest first; a folder that holds anything stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._created = []


def _flock(descriptor: int) -> bool:
    """Lock ``descriptor`` for this process without waiting; whether it got the lock."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (opened.st_dev, opened.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_holder(descriptor: int, wait: bool = False) -> LockHolder | None:
    """The record in a lock file; ``None`` when it holds none. With ``wait``, give a holder
    that has just locked the file a second to write its record."""
    for attempt in range(20 if wait else 1):
        if attempt:
            time.sleep(0.05)
        os.lseek(descriptor, 0, os.SEEK_SET)
        try:
            holder = LockHolder(**json.loads(os.read(descriptor, 64 * 1024)))
        except (ValueError, TypeError):
            continue
        if isinstance(holder.pid, int) and holder.pid > 0:
            return holder
    return None


def _is_running(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (where that cannot be asked: assumed)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would end the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
