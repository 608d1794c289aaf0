"""Checkpoints of the training loop: atomic `save_state` folders `checkpoints/epoch_N`, pruning, and resuming.

Each checkpoint holds Accelerate's state, the trainer's private random generators (safetensors, one file per
process: `save_state` restores the global RNGs but not these) and `capt_progress.json` (the finished epoch and the
run's weight-deciding flags, checked on resume).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import zipfile

from dataset_scripts.atomic_io import replace_directory, write_json_atomic


logger = logging.getLogger("capt")


PROGRESS_FILE = "capt_progress.json"
# The trainer's own random generators (the training loader's shuffle, CAPT's random representative draws), one file
# per process: Accelerate's `save_state` restores the global RNGs but not these private generators.
GENERATORS_FILE = "capt_generators_{}.safetensors"


def epoch_folders(root) -> list[str]:
    """The `epoch_N` folders under `root`, oldest first (not the `.tmp` / `.old` folders of an interrupted save)."""
    if not os.path.isdir(root):
        return []
    names = [d for d in os.listdir(root) if re.fullmatch(r"epoch_\d+", d) and os.path.isdir(os.path.join(root, d))]
    return sorted(names, key=_epoch_number)


def _epoch_number(folder_name: str) -> int:
    """N of an `epoch_N` checkpoint folder."""
    return int(folder_name.split("_")[1])


def prune_checkpoints(root, keep, newest: int | None = None):
    """Delete all but the newest `keep` finished epoch checkpoints under `root` (0 keeps all).

    `newest` is the epoch this run has just saved: a checkpoint of a later epoch is left over from an earlier run into
    the same output folder (a run of more epochs), so it counts as older than every checkpoint of this run. Without
    this, pruning deleted the checkpoint just written and kept the earlier run's, which `--resume_from_checkpoint
    latest` then resumed.
    """
    if keep <= 0 or not os.path.isdir(root):
        return
    done = epoch_folders(root)
    if newest is not None:
        done = [d for d in done if _epoch_number(d) > newest] + [d for d in done if _epoch_number(d) <= newest]
    for old in done[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)


def save_generators(directory, generators: dict, process_index: int) -> None:
    from safetensors.torch import save_file

    states = {name: generator.get_state() for name, generator in generators.items() if generator is not None}
    save_file(states, os.path.join(directory, GENERATORS_FILE.format(process_index)))


def load_generators(directory, generators: dict, process_index: int) -> None:
    from safetensors.torch import load_file

    path = os.path.join(directory, GENERATORS_FILE.format(process_index))
    if not os.path.isfile(path):
        logger.warning("%s holds no generator states (an older checkpoint): the resumed run's data order and "
                       "random draws differ from an uninterrupted run", directory)
        return
    states = load_file(path)
    for name, generator in generators.items():
        if generator is not None and name in states:
            generator.set_state(states[name])


class DamagedCheckpointError(ValueError):
    """A checkpoint file is missing, cut short or altered: resuming from it would not give the uninterrupted run."""


# Accelerate's files a resumable checkpoint must hold (Accelerate names the extra models / optimizers `model_1...`).
REQUIRED_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl")


def file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_manifest(directory) -> dict:
    """Size and SHA-256 of every file of a checkpoint folder but the progress file (which records this manifest)."""
    return {
        name: {"bytes": os.path.getsize(os.path.join(directory, name)),
               "sha256": file_digest(os.path.join(directory, name))}
        for name in sorted(os.listdir(directory))
        if name != PROGRESS_FILE and os.path.isfile(os.path.join(directory, name))
    }


def _check_safetensors(path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then exactly the tensors' bytes it lists."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise DamagedCheckpointError(f"{path} is cut short ({size} bytes, not a safetensors file)")
        (header_length,) = struct.unpack("<Q", head)
        if 8 + header_length > size:
            raise DamagedCheckpointError(f"{path} is cut short: its header alone is {header_length} bytes, the file "
                                         f"{size}")
        try:
            header = json.loads(handle.read(header_length))
        except (ValueError, UnicodeDecodeError) as err:
            raise DamagedCheckpointError(f"{path} has a damaged safetensors header ({err})") from err
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_length + max(ends, default=0)
    if size != expected:
        raise DamagedCheckpointError(f"{path} is {size} bytes but its safetensors header describes {expected}: it was "
                                     "cut short or altered")


def _check_torch_zip(path) -> None:
    """A `torch.save` file is a zip archive: check its directory and every member's CRC (nothing is unpickled)."""
    if not zipfile.is_zipfile(path):
        raise DamagedCheckpointError(f"{path} is not a complete torch.save archive (cut short or altered)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DamagedCheckpointError(f"{path} is a damaged torch.save archive ({err})") from err
    if bad is not None:
        raise DamagedCheckpointError(f"{path} is damaged: its member {bad} fails its checksum")
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        raise DamagedCheckpointError(f"{path} is a zip archive but not a torch.save file (no data.pkl)")


def verify_checkpoint(directory, progress: dict) -> None:
    """Check every file of a checkpoint before any work: Accelerate's and the trainer's files are present, each is
    whole (safetensors header against the file size, torch.save zip directory and checksums), and, for a checkpoint
    that records them, each file's size and SHA-256 are the ones written. Raises `DamagedCheckpointError` naming the
    file. Nothing is unpickled."""
    names = sorted(name for name in os.listdir(directory) if os.path.isfile(os.path.join(directory, name)))
    manifest = progress.get("files")
    required = set(REQUIRED_FILES) | set(manifest or ())
    missing = sorted(required - set(names))
    if missing:
        raise DamagedCheckpointError(f"{directory} lacks {missing}: it cannot be resumed as saved")
    for name in names:
        path = os.path.join(directory, name)
        if name.endswith(".safetensors"):
            _check_safetensors(path)
        elif name.endswith((".bin", ".pkl")):
            _check_torch_zip(path)
        if manifest and name in manifest:
            recorded = manifest[name]
            if os.path.getsize(path) != recorded["bytes"] or file_digest(path) != recorded["sha256"]:
                raise DamagedCheckpointError(f"{path} differs from the file the checkpoint recorded (size "
                                             f"{os.path.getsize(path)}, recorded {recorded['bytes']}): it was cut "
                                             "short or altered")


class _RecordFailedLoads(logging.Filter):
    """Catches Accelerate's 'Could not load random states' (logged at INFO, and otherwise ignored)."""

    def __init__(self):
        super().__init__()
        self.failures = []

    def filter(self, record):
        if record.levelno < logging.WARNING:
            if "could not load" in record.getMessage().lower():
                self.failures.append(record.getMessage())
            return False  # the INFO chatter stays hidden, as the trainer's logging setup wants
        return True


@contextlib.contextmanager
def _fail_on_ignored_load_errors(directory, process_index):
    accelerate_logger = logging.getLogger("accelerate.checkpointing")
    level, recorder = accelerate_logger.level, _RecordFailedLoads()
    accelerate_logger.setLevel(logging.INFO)
    accelerate_logger.addFilter(recorder)
    try:
        yield
    finally:
        accelerate_logger.removeFilter(recorder)
        accelerate_logger.setLevel(level)
    if recorder.failures:
        rng_file = os.path.join(directory, f"random_states_{process_index}.pkl")
        raise DamagedCheckpointError(f"Accelerate could not restore {directory} ({'; '.join(recorder.failures)}; "
                                     f"{rng_file}): the resumed run would draw other random numbers than the "
                                     "uninterrupted one")


def load_checkpoint(accelerator, directory, generators: dict) -> int:
    """Restore a checkpoint `resolve_resume` checked: Accelerate's state (a part Accelerate fails to restore and would
    only log at INFO, the RNG states, is an error here) and the trainer's generators. Returns the finished epoch."""
    with _fail_on_ignored_load_errors(directory, accelerator.process_index):
        accelerator.load_state(directory)
    load_generators(directory, generators, accelerator.process_index)
    with open(os.path.join(directory, PROGRESS_FILE), encoding="utf-8") as handle:
        return int(json.load(handle)["epoch"])


def save_checkpoint(accelerator, directory, epoch, generators=None, settings=None):
    """`save_state` into a temporary folder, then rename: a crash never leaves a half-written checkpoint.

    The finished epoch and the run's weight-deciding flags (`settings`, checked on resume) go to a JSON file beside
    Accelerate's files (not `register_for_checkpointing`, whose pickled custom states Accelerate reloads with
    `weights_only=False`). The confusion bank needs no checkpoint: it is saved as Parquet in
    `OUTPUT_DIR/confusion_bank` and rebuilt identically on resume.
    """
    tmp = directory + ".tmp"
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp, safe_serialization=True)
    if generators:
        save_generators(tmp, generators, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(os.path.join(tmp, PROGRESS_FILE),
                          {"epoch": epoch, "settings": settings, "files": checkpoint_manifest(tmp)})
        replace_directory(tmp, directory)  # the old epoch_N is set aside, not deleted in place
    accelerator.wait_for_everyone()


def latest_checkpoint(output_dir):
    root = os.path.join(output_dir, "checkpoints")
    done = [d for d in epoch_folders(root) if os.path.isfile(os.path.join(root, d, PROGRESS_FILE))]
    if not done:
        return None
    return os.path.join(root, done[-1])


def resolve_resume(train_args, settings: dict) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` names (`latest`: the newest finished one, or None), checked
    before any work: it must be a finished checkpoint of a run with the same weight-deciding flags."""
    resume = train_args.resume_from_checkpoint
    if not resume:
        return None
    if resume == "latest":
        resume = latest_checkpoint(train_args.output_dir)
        if resume is None:
            logger.info("--resume_from_checkpoint latest: no finished checkpoint under %s, training from epoch 0",
                        os.path.join(train_args.output_dir, "checkpoints"))
            return None
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume_from_checkpoint: no checkpoint folder at {resume}")
    progress_file = os.path.join(resume, PROGRESS_FILE)
    if not os.path.isfile(progress_file):
        raise FileNotFoundError(f"{resume} is not a finished checkpoint of this trainer (no {PROGRESS_FILE})")
    try:
        with open(progress_file, encoding="utf-8") as handle:
            progress = json.load(handle)
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedCheckpointError(f"{progress_file} is not valid JSON ({err}): the checkpoint is damaged") from err
    if not isinstance(progress, dict) or not isinstance(progress.get("epoch"), int):
        raise DamagedCheckpointError(f"{progress_file} records no finished epoch: the checkpoint is damaged")
    verify_checkpoint(resume, progress)
    saved = progress.get("settings")
    if int(progress.get("epoch", 0)) > train_args.num_train_epochs:
        raise ValueError(
            f"{resume} was saved after epoch {progress['epoch']}, past this run's --num_train_epochs "
            f"{train_args.num_train_epochs}: it cannot be resumed into this run (give --num_train_epochs "
            f"{progress['epoch']} or more, or train into a new --output_dir)"
        )
    if saved is None:
        logger.warning("%s does not record its run's flags (an older checkpoint): they are not checked", resume)
        return resume
    changed = {name: (saved.get(name), value) for name, value in settings.items() if saved.get(name) != value}
    if changed:
        listed = "; ".join(f"--{name}: checkpoint {old!r}, this run {new!r}" for name, (old, new) in changed.items())
        raise ValueError(
            f"{resume} was written by a run with other training flags ({listed}). Resume with the same flags, or "
            "train into a new --output_dir."
        )
    return resume
