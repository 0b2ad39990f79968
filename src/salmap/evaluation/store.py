"""The run folder: the one owner of everything a run writes.

Writes are atomic (a temporary name, flushed, then renamed), so a file holds either
nothing or all of it; a unit's rows file is the only record that the unit is done, so a
run killed at any moment (``kill -9`` included) resumes exactly. The folder is locked
while a run writes to it (:mod:`salmap.evaluation.lock`). ``overwrite`` replaces only a
run salmap recognises (a ``run.json`` it wrote), and deletes only the files salmap names
its own; a folder holding anything else is refused.

Layout
------
``run.json``
    ``{schema_version, tool: "salmap", command, fingerprint, settings, facts}`` (``facts``: what
    identifies the models and the data, see :mod:`salmap.evaluation.identity`).
``batches/<unit>.jsonl``
    the rows of one unit; ``<unit>.examples.safetensors``: the inputs the figures need.
``adversarial/<unit>.safetensors``
    with ``save_adversarial``: every adversarial example of the unit, losslessly (see
    :func:`salmap.evaluation.adversarial.load_adversarial`).
``results.jsonl``, ``summary.json``, ``report.html``, ``figures/*.png``
    written when every unit is done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from salmap.evaluation.files import (
    SCHEMA_VERSION,
    atomic_write,
    clean_json,
    load_tensors,
    save_tensors,
    write_json,
)
from salmap.evaluation.identity import what_changed
from salmap.evaluation.lock import FolderLock

RUN_FILE = "run.json"
BATCHES = "batches"
ADVERSARIAL = "adversarial"
RESULTS = "results.jsonl"
SUMMARY = "summary.json"
REPORT = "report.html"
FIGURES = "figures"
PNG = "png"
#: the names salmap writes at the top of a run folder, and the patterns of the files inside its folders
OWNED_FILES = (RUN_FILE, RESULTS, SUMMARY, REPORT, "results.json", "grid.png", "pairs.png", "source-target.png",
               "explain.png", "attack.png", "rounding.json")
#: the files a command writes at the top of its run folder besides those (``salmap defend``: the checkpoint)
COMMAND_FILES = {"defend": ("model.json", "weights.safetensors", "model.ts", "evaluation.json", "training.json")}
OWNED_PATTERNS = {
    BATCHES: re.compile(r"^\.?[me]\d{3}-[ae]\d{3}-b\d{6}(\.jsonl|\.examples\.safetensors)(\.tmp-\d+)?$"),
    ADVERSARIAL: re.compile(r"^\.?[me]\d{3}-[ae]\d{3}-b\d{6}\.safetensors(\.tmp-\d+)?$"),
    FIGURES: re.compile(r"^\.?m\d{2}-[\w.-]+\.png(\.tmp-\d+)?$"),
    PNG: re.compile(r"^\.?[me]\d{3}-[ae]\d{3}-b\d{6}-\d+(-t\d+)?\.png(\.tmp-\d+)?$"),
}


def recognised(out: Path) -> dict[str, Any] | None:
    """The ``run.json`` of a run salmap wrote in ``out``, or None."""
    try:
        found = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(found, dict) and "fingerprint" in found and "schema_version" in found:
        return found
    return None


class RunStore:
    """The output folder of one run: lock, claim, unit files, merged results.

    Use as a context manager (the lock is held inside)::

        with RunStore(out) as store:
            resumed = store.claim(fingerprint, settings, overwrite=False)
    """

    def __init__(self, out: str | Path, command: str = "evaluate") -> None:
        self.out = Path(out)
        self.command = command
        self._lock = FolderLock(self.out)
        self.owned_files = OWNED_FILES + COMMAND_FILES.get(command, ())

    @property
    def batches(self) -> Path:
        return self.out / BATCHES

    def __enter__(self) -> RunStore:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def lock(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"output folder {str(self.out)!r} is a file; choose a folder")
        self._lock.acquire()

    def unlock(self) -> None:
        self._lock.release()

    # -- claiming the folder ------------------------------------------------------------
    def claim(self, fingerprint: str, settings: dict[str, Any], overwrite: bool,
              facts: dict[str, Any] | None = None) -> bool:
        """Claim the folder for this run. Returns whether an earlier attempt is resumed.

        ``facts`` (the plan's ``extra``: what identifies the models and data) are kept beside
        ``settings`` in ``run.json``, so that a refusal names what changed.
        The same run (same fingerprint) resumes. Another salmap run is refused unless
        ``overwrite``: then only the files salmap wrote for it are removed (by name and
        pattern; anything else in the folder stays). A folder holding no salmap run is
        refused unless ``overwrite``, and then still refused if it has files where salmap
        writes (``results.jsonl``, ``figures/``, ...): salmap deletes nothing it did not write.
        """
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        # A run of another command leaves salmap defend's checkpoint (model.json, weights, ...) in place: only
        # salmap defend replaces it, so --overwrite never deletes a trained model another command may be reading.
        previous = recognised(out)
        if previous is not None and previous.get("fingerprint") == fingerprint and not overwrite:
            for folder in (self.batches, out / ADVERSARIAL):
                for stale in folder.glob(".*.tmp-*"):
                    stale.unlink(missing_ok=True)  # a write interrupted by the crash
            self.batches.mkdir(exist_ok=True)
            return True
        if previous is not None and not overwrite:
            changed = what_changed(previous, settings, facts or {})
            raise ValueError(
                f"output folder {str(out)!r} holds a different run (fingerprint {previous.get('fingerprint')}, "
                f"this run {fingerprint}{'; changed: ' + '; '.join(changed[:4]) if changed else ''}); choose another "
                "folder or pass --overwrite to replace it"
            )
        if previous is None:
            present = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
            if present and not overwrite:
                raise ValueError(
                    f"output folder {str(out)!r} is not empty and holds no salmap run ({', '.join(present[:5])}); "
                    "choose another folder or pass --overwrite to write the run beside those files"
                )
            clash = [name for name in present if name in self.owned_files or name in OWNED_PATTERNS]
            if clash:
                raise ValueError(
                    f"output folder {str(out)!r} holds no salmap run but has files where salmap writes "
                    f"({', '.join(clash[:5])}); --overwrite deletes only a run salmap wrote: move them or "
                    "choose another folder"
                )
        self.remove_owned()
        self.batches.mkdir(exist_ok=True)
        write_json(out / RUN_FILE, {"tool": "salmap", "command": self.command, "fingerprint": fingerprint,
                                    "settings": settings, **({"facts": facts} if facts else {})})
        return False

    def foreign_files(self) -> list[str]:
        """Files and folders in the output folder that salmap did not write (hidden ones ignored)."""
        found = []
        for p in sorted(self.out.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_file() and p.name in self.owned_files:
                continue
            if p.is_dir() and p.name in OWNED_PATTERNS:
                pattern = OWNED_PATTERNS[p.name]
                found += [f"{p.name}/{q.name}" for q in sorted(p.iterdir()) if not pattern.match(q.name) or q.is_dir()]
                continue
            found.append(p.name + ("/" if p.is_dir() else ""))
        return found

    def remove_owned(self) -> None:
        """Remove the files salmap writes (by name and pattern); folders only once empty."""
        for name in self.owned_files:
            target = self.out / name
            if target.is_file():
                target.unlink()
        for name, pattern in OWNED_PATTERNS.items():
            folder = self.out / name
            if not folder.is_dir():
                continue
            for q in folder.iterdir():
                if q.is_file() and pattern.match(q.name):
                    q.unlink()
            try:
                folder.rmdir()
            except OSError:
                pass

    # -- units ----------------------------------------------------------------------------
    def unit_path(self, key: str) -> Path:
        return self.batches / f"{key}.jsonl"

    def done(self, keys: list[str]) -> set[str]:
        return {k for k in keys if self.unit_path(k).is_file()}

    def write_unit(self, key: str, rows: list[dict[str, Any]], examples: dict[str, Tensor] | None = None,
                   adversarial: dict[str, Tensor] | None = None, pngs: list[tuple[str, Tensor]] | None = None,
                   ) -> None:
        """Commit a unit: its tensors and images first, then the rows file whose presence marks it done."""
        self.write_pngs(pngs or [])
        if examples:
            save_tensors(self.batches / f"{key}.examples.safetensors", examples)
        if adversarial:
            (self.out / ADVERSARIAL).mkdir(exist_ok=True)
            save_tensors(self.out / ADVERSARIAL / f"{key}.safetensors", adversarial)
        text = "".join(json.dumps(clean_json(r), allow_nan=False) + "\n" for r in rows)
        atomic_write(self.unit_path(key), text.encode())

    def write_pngs(self, images: list[tuple[str, Tensor]]) -> None:
        """8-bit PNGs ``(file name, uint8 (C, H, W))`` under ``png/`` (grey for one channel, RGB for three)."""
        if not images:
            return
        from PIL import Image

        folder = self.out / PNG
        folder.mkdir(exist_ok=True)
        for name, levels in images:
            array = levels.cpu().numpy()
            if array.shape[0] not in (1, 3):
                raise ValueError(f"save_png writes 1- or 3-channel images, got {array.shape[0]} channels")
            image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
            tmp = folder / f".{name}.tmp-{os.getpid()}"
            image.save(tmp, format="PNG")
            os.replace(tmp, folder / name)

    def read_unit(self, key: str) -> list[dict[str, Any]]:
        path = self.unit_path(key)
        rows = []
        try:
            text = path.read_text()
        except UnicodeDecodeError as err:
            raise ValueError(f"unit file {path} is not text ({err})") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line:
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
                rows.append(row)
            except ValueError as err:
                raise ValueError(f"unit file {path} line {number} is not valid JSON ({err})") from None
        return rows

    def examples(self, key: str) -> dict[str, Tensor]:
        """A unit's kept inputs (``{}`` when it kept none); ValueError naming a damaged file."""
        path = self.batches / f"{key}.examples.safetensors"
        return load_tensors(path, "unit file") if path.is_file() else {}

    def check_tensors(self, key: str, examples: bool = False, adversarial: bool = False) -> None:
        """Read back a unit's tensor files (its examples, which must be there with ``examples``; its
        adversarial shard, which must be there with ``adversarial``): a ValueError names a damaged or
        missing one."""
        kept, shard = self.batches / f"{key}.examples.safetensors", self.out / ADVERSARIAL / f"{key}.safetensors"
        for path, needed in ((kept, examples), (shard, adversarial)):
            if needed and not path.is_file():
                raise ValueError(f"unit file {path} is missing")
            if path.is_file() and (needed or path == kept):
                load_tensors(path, "unit file")

    def write_results(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(clean_json(r), allow_nan=False) + "\n" for r in rows)
        atomic_write(self.out / RESULTS, text.encode())

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        return write_json(self.out / name, payload)

    def remove_batches(self) -> None:
        """Remove the unit files (for commands whose results file holds everything)."""
        if self.batches.is_dir():
            shutil.rmtree(self.batches)


def read_results(out: str | Path) -> list[dict[str, Any]]:
    """The rows of a finished run's ``results.jsonl``."""
    path = Path(out) / RESULTS
    if not path.is_file():
        what = "does not exist" if not Path(out).exists() else f"holds no {RESULTS} (not a finished run)"
        raise ValueError(f"out {str(out)!r} {what}")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


__all__ = [
    "ADVERSARIAL", "BATCHES", "FIGURES", "PNG", "REPORT", "RESULTS", "RUN_FILE", "SCHEMA_VERSION", "SUMMARY", "RunStore",
    "atomic_write", "clean_json", "read_results", "recognised", "write_json",
]
