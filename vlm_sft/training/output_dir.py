"""An output_dir that no run loses: one run at a time, only a run's own files replaced, and only after success.

- A lock file (`.vlm_sft.lock`: PID, host, start time) is created atomically when a run starts; a second run is
  refused at once, naming the first. A lock left by a dead process on this host is taken over with a message.
- Each run leaves a marker (`.vlm_sft_run.json`) listing every file and folder it wrote. Only those (and that
  run's `checkpoint-N` folders) are ever moved or deleted; a folder holding anything else is refused, listing it.
- `overwrite_output_dir` moves the previous run's files aside (`.vlm_sft_previous/`, a rename on the same disk) once
  every value, the data and the model are checked. If the new run fails before its first save they are moved back;
  they are deleted only when the new run has finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from vlm_sft.training.checkpoints import OutputDirError, checkpoint_step, list_checkpoints

logger = logging.getLogger(__name__)

MARKER = ".vlm_sft_run.json"
LOCK = ".vlm_sft.lock"
PREVIOUS = ".vlm_sft_previous"
_OWN_PREFIX = ".vlm_sft"  # marker, lock, the results set aside, and their temporary names
# Names a run writes, to tell "another run's results" (needs overwrite) from a user's unrelated files.
_RESULT_NAMES = ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json", "model.safetensors")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _listing(paths: list[Path], limit: int = 8) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in sorted(paths)]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output_path(output_dir: str | Path) -> None:
    """Refuse an output_dir that is a file, or that cannot be created or written to."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(
            f"output_dir {str(path)!r} is an existing file, not a folder. Choose another --output_dir."
        )
    existing = path if path.is_dir() else next((p for p in path.parents if p.exists()), Path("."))
    if not existing.is_dir():
        raise OutputDirError(f"output_dir {str(path)!r} cannot be created: {str(existing)!r} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirError(
            f"output_dir {str(path)!r} is not writable ({str(existing)!r} denies write permission). "
            "Choose another --output_dir or fix its permissions."
        )


def read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), list) else None


def split_contents(folder: Path) -> tuple[list[Path], list[Path]]:
    """(what a vlm-sft run wrote, everything else) in `folder`, by the marker the run left."""
    if not folder.is_dir():
        return [], []
    marker = read_marker(folder)
    listed = set(marker["files"]) if marker else set()
    ours, foreign = [], []
    for entry in folder.iterdir():
        if entry.name.startswith(_OWN_PREFIX):
            continue
        # checkpoint-N folders of a marked run are its own even when written after the marker's last update (a kill).
        mine = entry.name in listed or (marker is not None and checkpoint_step(entry) is not None)
        (ours if mine else foreign).append(entry)
    return sorted(ours), sorted(foreign)


def record_written(path: str | Path) -> None:
    """Add `path` (e.g. `<output_dir>/eval` from `vlm-sft eval`) to its run's marker, so a rerun may replace it."""
    path = Path(path)
    marker = read_marker(path.parent)
    if marker is None or path.name in marker["files"] or path.name.startswith(_OWN_PREFIX):
        return
    marker["files"] = sorted([*marker["files"], path.name])
    tmp = path.parent / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, path.parent / MARKER)


class OutputDir:
    """The run's hold on its output_dir: lock, checks, moving the previous results aside, and the marker."""

    def __init__(self, path: str | Path, main_process: bool = True) -> None:
        self.path = Path(path)
        self.main = main_process
        self.locked = False
        self.created = False
        self.saved = False
        self.moved_aside: list[str] = []
        self.foreign_at_start: set[str] = set()
        self.at_start: set[str] = set()  # names in the folder when this run began writing (kept on failure)
        self.had_marker = False

    # ---------------------------------------------------------------- lock
    def lock(self) -> None:
        """Create the lock file atomically; refuse while another live run holds it, take over a dead one's."""
        check_output_path(self.path)
        if not self.main:
            return
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK
        body = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._check_holder(lock)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(body, f)
            self.locked = True
            return
        raise OutputDirError(f"output_dir {str(self.path)!r}: could not take the lock {lock} (another run took it).")

    def _check_holder(self, lock: Path) -> None:
        """Refuse if the lock's process is alive (or on another host); remove a dead process's lock."""
        try:
            holder = json.loads(lock.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, None, None
        if pid is not None and (host != socket.gethostname() or _pid_alive(pid)):
            raise OutputDirError(
                f"output_dir {str(self.path)!r} is in use by another run (PID {pid} on {host}, started "
                f"{holder.get('started', '?')}). Wait for it to finish, or choose another --output_dir. If that run "
                f"is gone (another host), delete {lock}."
            )
        logger.warning(
            "Taking over the stale lock %s (%s): that run is no longer running.",
            lock,
            f"PID {pid} on {host}" if pid is not None else "unreadable",
        )
        lock.unlink(missing_ok=True)

    def release(self) -> None:
        if not self.locked:
            return
        (self.path / LOCK).unlink(missing_ok=True)
        self.locked = False
        if self.created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()  # a run refused before writing leaves no empty folder behind

    # ---------------------------------------------------------------- checks
    def check(self, overwrite: bool, resuming: bool) -> list[Path]:
        """What overwrite will move aside; refuses a folder with other files, or another run's without overwrite."""
        self._restore_interrupted()
        ours, foreign = split_contents(self.path)
        self.foreign_at_start = {p.name for p in foreign}
        if resuming:
            return []  # continuing a run: nothing is moved or deleted (incomplete checkpoints aside)
        if foreign:
            looks_like_run = [p for p in foreign if p.name in _RESULT_NAMES or checkpoint_step(p) is not None]
            what = "another tool's or an older run's results" if looks_like_run else "files no vlm-sft run wrote"
            raise OutputDirError(
                f"output_dir {str(self.path)!r} holds {what} ({_listing(foreign)}); vlm-sft only replaces files "
                f"its own runs wrote (listed in {MARKER}). Choose another --output_dir, or move those files away."
            )
        if ours and not overwrite:
            raise OutputDirError(
                f"output_dir {str(self.path)!r} already holds another run's results ({_listing(ours)}). Pass "
                "--overwrite_output_dir true to replace them, --resume_from_checkpoint true to continue that run, "
                "or choose another --output_dir."
            )
        return ours

    def _restore_interrupted(self) -> None:
        """A run killed before its first save left the results it replaced aside: put them back."""
        aside = self.path / PREVIOUS
        if not self.main or not aside.is_dir():
            return
        ours, _ = split_contents(self.path)
        if any(p.name.startswith("adapter_") or checkpoint_step(p) is not None for p in ours) or list_checkpoints(
            self.path
        ):
            logger.warning("%s holds the results an interrupted run replaced; it is kept as it is.", aside)
            return
        logger.warning(
            "An earlier run was interrupted before it saved anything: restoring the results from %s.", aside
        )
        for entry in ours:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        (self.path / MARKER).unlink(missing_ok=True)  # the interrupted run's; the restored run's own comes back
        self._move_back(aside)

    # ---------------------------------------------------------------- replace
    def set_aside(self, previous: list[Path]) -> None:
        """Move the previous run's files (and marker) into PREVIOUS, then mark this run as started."""
        if not self.main:
            return
        aside = self.path / PREVIOUS
        if previous:
            if aside.exists():  # results of a run before an interrupted one: keep them, nested
                tmp = self.path / f"{PREVIOUS}.tmp"
                aside.rename(tmp)
                aside.mkdir()
                tmp.rename(aside / PREVIOUS)
            aside.mkdir(exist_ok=True)
            for entry in [*previous, self.path / MARKER]:
                if entry.exists():
                    logger.warning("overwrite_output_dir: moving %s aside until this run finishes.", entry.name)
                    entry.rename(aside / entry.name)
                    self.moved_aside.append(entry.name)
        self.had_marker = (self.path / MARKER).is_file()  # resuming a marked run: its marker stays
        self.at_start = {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()
        self.write_marker(finished=False)

    def written(self) -> list[str]:
        """Names this run wrote: everything in the folder except our own files and what was there before."""
        if not self.path.is_dir():
            return []
        names = {p.name for p in self.path.iterdir() if not p.name.startswith(_OWN_PREFIX)}
        return sorted(names - self.foreign_at_start - self.at_start)

    def write_marker(self, finished: bool) -> None:
        if not self.main or not self.path.is_dir():
            return
        marker = read_marker(self.path) or {}
        body = {
            "written_by": "vlm-sft",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "finished": finished,
            "files": sorted((set(marker.get("files", [])) | set(self.written())) - self.foreign_at_start),
        }
        tmp = self.path / f"{MARKER}.tmp"
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, self.path / MARKER)

    def succeeded(self) -> None:
        """The new run finished: record its files, then delete the results it replaced."""
        self.saved = True
        self.write_marker(finished=True)
        aside = self.path / PREVIOUS
        if self.main and self.moved_aside and aside.is_dir():
            shutil.rmtree(aside)

    def failed(self) -> None:
        """Before the first save: delete what this run wrote and restore what it replaced. After: keep both."""
        if not self.main or not self.path.is_dir():
            return
        aside = self.path / PREVIOUS
        if self.saved:
            self.write_marker(finished=False)
            if self.moved_aside:
                logger.warning("The run failed after saving; the results it replaced are kept in %s.", aside)
            return
        for name in self.written():
            entry = self.path / name
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        if not self.had_marker:
            (self.path / MARKER).unlink(missing_ok=True)
        if self.moved_aside:
            logger.warning("The run failed before saving anything: the previous results are restored.")
            self._move_back(aside)

    def _move_back(self, aside: Path) -> None:
        for entry in aside.iterdir():
            if not (self.path / entry.name).exists():
                entry.rename(self.path / entry.name)
        if not any(aside.iterdir()):
            aside.rmdir()


class RunMarkerCallback(TrainerCallback):
    """After each checkpoint: this run has saved (no rollback now), and the marker lists what it wrote."""

    def __init__(self, output_dir: OutputDir) -> None:
        self.output_dir = output_dir

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.output_dir.saved = True
            self.output_dir.write_marker(finished=False)
