"""Where a result came from: the command, the code (git commit), the packages, the machine and the date.

Every result file the book loads carries this record, in itself (a ``"provenance"`` entry of a JSON file, a
``provenance`` array of an ``.npz``) or in a sidecar JSON beside it (:func:`sidecar_path`), so a reader and a test
can tell what produced it and whether the code has moved on since::

    meta = run_metadata("python -m netmoments.experiments tightness --images 40", wall_s=812.4)
    write_sidecar("results/tightness.csv", meta)

Only the standard library is needed (torch, numpy, ... are reported if installed).
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["REQUIRED_KEYS", "ALIASES", "PACKAGES", "run_metadata", "machine_description", "cpu_model", "git_state",
           "sidecar_path", "write_sidecar", "read_provenance", "describe_provenance"]

#: The keys every record has; :func:`read_provenance` checks them.
REQUIRED_KEYS = ("command", "git_commit", "packages", "machine", "date")

#: The distributions whose versions are recorded (when installed).
PACKAGES = ("netmoments", "torch", "numpy", "scipy", "matplotlib", "scikit-learn", "mlxtend", "foolbox")

_REPO = Path(__file__).resolve().parent.parent


def git_state(repo: str | os.PathLike | None = None,
              paths: Sequence[str] = (".", ":(exclude)book/data")) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``repo`` (default: this package's checkout).

    ``commit`` is the full hash of ``HEAD``; ``dirty`` says whether tracked files under ``paths`` (git
    pathspecs, relative to the checkout's root) differ from it: the result was then produced by code that no
    commit holds. The default leaves out ``book/data``, where runs append their own results as they go. Both are
    ``None`` outside a git checkout or without git.
    """
    cwd = Path(repo) if repo is not None else _REPO
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        root = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *paths], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status.strip())


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> tuple[str, int]:
    """``(name, count)``: the CPU model and how many logical CPUs ``/proc/cpuinfo`` lists under it.

    Where there is no ``/proc/cpuinfo`` (macOS, Windows) the name is :func:`platform.processor` (or the
    architecture) and the count 0; :func:`os.cpu_count` gives the logical CPUs there.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        names = []
    if names:
        return names[0], len(names)
    return platform.processor() or platform.machine(), 0


def machine_description() -> dict:
    """The machine: OS, CPU model and count, torch threads and accelerator when torch is imported."""
    info = {
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_model()[0],
        "logical_cpus": os.cpu_count(),
    }
    torch = sys.modules.get("torch")  # report torch's settings only if the run used it
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def run_metadata(command: str | Sequence[str] | None = None, **extra) -> dict:
    """The provenance record of a run.

    Args:
        command: the command line that produced the result, as a string or an argv list; default ``sys.argv``
            (prefixed with the interpreter's ``-m`` module when run that way is not recoverable, so pass it).
        **extra: anything else worth keeping beside it (``wall_s``, ``seed``, arguments, ...); JSON-serialisable.

    Returns:
        a JSON-serialisable dict with ``command`` (str), ``git_commit`` (str or None), ``git_dirty`` (bool or
        None), ``packages`` (``{"python": ..., name: version}``), ``machine`` (:func:`machine_description`),
        ``date`` (UTC, ISO 8601) and the ``extra`` items.

    Raises:
        TypeError: ``command`` is neither a string nor a sequence of strings.
        ValueError: an ``extra`` key would overwrite one of the recorded keys.
    """
    if command is None:
        command = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    if isinstance(command, str):
        text = command
    elif isinstance(command, Sequence) and all(isinstance(c, str) for c in command):
        text = shlex.join(command)
    else:
        raise TypeError(f"command must be a str or a sequence of str, got {type(command).__name__}")
    commit, dirty = git_state()
    packages = {"python": platform.python_version()}
    packages.update({name: v for name in PACKAGES if (v := _version(name)) is not None})
    record = {
        "command": text,
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": packages,
        "machine": machine_description(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    clash = set(extra) & set(record)
    if clash:
        raise ValueError(f"extra keys clash with recorded ones: {sorted(clash)}")
    record.update(extra)
    json.dumps(record)  # fail here, not when writing the file, if something is not serialisable
    return record


def sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar JSON of a result file: ``name.ext`` -> ``name.ext.provenance.json``."""
    path = Path(path)
    return path.with_name(path.name + ".provenance.json")


def write_sidecar(path: str | os.PathLike, metadata: Mapping) -> Path:
    """Write ``metadata`` (e.g. :func:`run_metadata`) beside the result file ``path``; returns the sidecar."""
    out = sidecar_path(path)
    out.write_text(json.dumps(dict(metadata), indent=2, sort_keys=True) + "\n", encoding="utf8")
    return out


#: Other spellings of the required keys met in the project's result files (the experiment runner writes
#: ``versions`` and ``finished``); a record using them counts the same.
ALIASES = {"packages": ("versions",), "date": ("finished", "started")}


def _normalised(record):
    """``record`` with :data:`ALIASES` mapped onto the required keys (unchanged if not a mapping)."""
    if not isinstance(record, Mapping):
        return record
    record = dict(record)
    for key, others in ALIASES.items():
        if not record.get(key):
            found = [record[o] for o in others if record.get(o)]
            if found:
                record[key] = found[0]
    return record


def _complete(record) -> bool:
    """Every required key present, and all but ``git_commit`` (``None`` outside a checkout) non-empty."""
    if not isinstance(record, Mapping) or any(key not in record for key in REQUIRED_KEYS):
        return False
    return all(record[key] for key in REQUIRED_KEYS if key != "git_commit")


def _metadata_json(path: Path) -> Path:
    """The JSON file that describes ``path``: itself, or the one of the same stem (``rows.jsonl.gz`` -> ``rows.json``)."""
    if path.suffix == ".json":
        return path
    return (path.with_suffix("") if path.suffix == ".gz" else path).with_suffix(".json")


def read_provenance(path: str | os.PathLike) -> dict | None:
    """The provenance record of a result file, or ``None`` if it has none.

    Looked up, in order: the sidecar (:func:`sidecar_path`); the JSON file of the same stem (``name.json`` for
    ``name.csv`` or ``name.jsonl.gz``, as the experiment runners write it); a JSON file's ``"provenance"`` entry or the file itself
    if it holds the :data:`REQUIRED_KEYS` at top level, or the last of its ``"sittings"`` (a resumable run) if
    every sitting holds them; an ``.npz`` file's ``provenance`` array (a JSON string). A record counts only if it
    has every required key, or an alias of it (:data:`ALIASES`); ``git_commit`` may be ``None`` for a run outside
    a checkout, but must be present.
    """
    path = Path(path)
    candidates = []
    side = sidecar_path(path)
    if side.is_file():
        candidates.append(json.loads(side.read_text(encoding="utf8")))
    json_file = _metadata_json(path)
    if json_file.is_file():
        data = json.loads(json_file.read_text(encoding="utf8"))
        if isinstance(data, Mapping):
            candidates += [data.get("provenance"), data]
            # a resumable run written in sittings: each sitting must carry a full record; the last one stands
            sittings = data.get("sittings")
            if isinstance(sittings, list) and sittings and all(_complete(_normalised(x)) for x in sittings):
                candidates.append(sittings[-1])
    if path.suffix == ".npz" and path.is_file():
        import numpy as np

        with np.load(path, allow_pickle=False) as data:
            if "provenance" in data.files:
                candidates.append(json.loads(str(data["provenance"])))
    for record in map(_normalised, candidates):
        if _complete(record):
            return record
    return None


def _machine_text(machine) -> str:
    if isinstance(machine, Mapping):
        parts = [machine.get("system"), machine.get("cpu")]
        if machine.get("logical_cpus"):
            parts.append(f"{machine['logical_cpus']} logical CPUs")
        if machine.get("cuda_devices"):
            parts.append(", ".join(machine["cuda_devices"]))
        return ", ".join(str(p) for p in parts if p)
    return str(machine)


def describe_provenance(path: str | os.PathLike,
                        packages: Sequence[str] = ("torch", "numpy", "scipy", "dask", "foolbox")) -> str:
    """One sentence saying where the result file ``path`` came from, for a chapter to print beside its tables.

    It names the command, the commit (12 hex digits, ``+dirty`` when uncommitted code ran), the machine, the date,
    the versions of ``packages`` that the record holds, and, for a run written in sittings, how many sittings and
    their total wall time.

    Raises:
        ValueError: ``path`` has no complete provenance record (:func:`read_provenance`).
    """
    record = read_provenance(path)
    if record is None:
        raise ValueError(f"path {str(path)!r} has no complete provenance record (command, commit, packages, "
                         f"machine, date)")
    commit = record["git_commit"]
    if commit is None:
        code = "outside a git checkout"
    else:
        dirty = commit.endswith("+dirty") or bool(record.get("git_dirty"))
        code = f"at commit {commit.removesuffix('+dirty')[:12]}" + (" (+ uncommitted changes)" if dirty else "")
    versions = record["packages"]
    pinned = ", ".join(f"{name} {versions[name]}" for name in packages if versions.get(name))
    text = (f"Produced by `{record['command']}` {code} on {_machine_text(record['machine'])}, "
            f"{record['date']}" + (f"; {pinned}" if pinned else ""))
    path = Path(path)
    json_file = _metadata_json(path)
    if json_file.is_file():
        data = json.loads(json_file.read_text(encoding="utf8"))
        sittings = data.get("sittings") if isinstance(data, Mapping) else None
        if isinstance(sittings, list) and len(sittings) > 1:
            wall = sum(float(s.get("wall_s") or 0) for s in sittings)
            text += f"; the last of {len(sittings)} sittings, {wall / 3600:.1f} h of wall time in all"
    return text + "."
