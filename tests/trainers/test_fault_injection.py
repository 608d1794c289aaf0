"""Fault injection: damaged checkpoints, crashes during the final save, concurrent writers and a full disk.

Each test damages one thing the trainer relies on and checks that the run stops before any work, naming what is
wrong, or that what was already saved survives (docs/reliability.md lists the promises these tests hold).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from trainers import checkpointing
from trainers.train_capt import main

from conftest import reset_accelerate, small_run_args


@pytest.fixture
def run_args(tmp_path, tiny_clip_dir):
    return small_run_args(tmp_path, tiny_clip_dir) + ["--output_dir", str(tmp_path / "out"), "--method", "coop"]


def _no_work(monkeypatch):
    from trainers import train_capt

    monkeypatch.setattr(train_capt, "prepare_splits", lambda *a: pytest.fail("work started before the check"))


# --------------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_FILES = ["model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                    "capt_generators_0.safetensors"]


@pytest.mark.slow
def test_a_truncated_or_altered_checkpoint_file_fails_before_any_work_naming_it(run_args, tmp_path, monkeypatch):
    main(run_args + ["--num_train_epochs", "1"])
    saved = tmp_path / "out" / "checkpoints" / "epoch_1"
    _no_work(monkeypatch)
    for damage in ("truncate", "flip"):
        for name in CHECKPOINT_FILES:
            checkpoint = tmp_path / f"{damage}-{name}"
            shutil.copytree(saved, checkpoint)
            content = (checkpoint / name).read_bytes()
            if damage == "truncate":
                content = content[: len(content) // 2]
            else:  # one byte altered in the middle, the size unchanged
                middle = len(content) // 2
                content = content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1:]
            (checkpoint / name).write_bytes(content)
            reset_accelerate()
            with pytest.raises(checkpointing.DamagedCheckpointError, match=name):
                main(run_args + ["--num_train_epochs", "2", "--resume_from_checkpoint", str(checkpoint)])
    missing = tmp_path / "missing-rng"
    shutil.copytree(saved, missing)
    os.remove(missing / "random_states_0.pkl")
    reset_accelerate()
    with pytest.raises(checkpointing.DamagedCheckpointError, match="random_states_0.pkl"):
        main(run_args + ["--num_train_epochs", "2", "--resume_from_checkpoint", str(missing)])


def test_structural_checks_without_a_manifest(tmp_path):
    """A checkpoint saved before manifests were recorded is still checked file by file (headers, zip checksums)."""
    from safetensors.torch import save_file

    folder = tmp_path / "epoch_1"
    folder.mkdir()
    save_file({"w": torch.arange(1000.0)}, folder / "model.safetensors")
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        torch.save({"state": torch.arange(1000)}, folder / name)
    checkpointing.verify_checkpoint(str(folder), {"epoch": 1})
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(checkpointing.DamagedCheckpointError, match="model.safetensors is .* bytes but its"):
        checkpointing.verify_checkpoint(str(folder), {"epoch": 1})
    (folder / "model.safetensors").write_bytes(data)
    data = (folder / "optimizer.bin").read_bytes()
    (folder / "optimizer.bin").write_bytes(data[: len(data) - 30])
    with pytest.raises(checkpointing.DamagedCheckpointError, match="optimizer.bin"):
        checkpointing.verify_checkpoint(str(folder), {"epoch": 1})


@pytest.mark.parametrize("content", ['{"epoch": 1, "sett', '{"settings": {}}', "[1]"])
def test_a_damaged_progress_file_fails_naming_it(tmp_path, content):
    """The trainer's own JSON (`capt_progress.json`) is outside its manifest: cut short or without its epoch, it is
    named as damaged, not a bare JSON error or a KeyError."""
    from types import SimpleNamespace

    folder = tmp_path / "epoch_1"
    folder.mkdir()
    (folder / checkpointing.PROGRESS_FILE).write_text(content)
    train_args = SimpleNamespace(resume_from_checkpoint=str(folder), output_dir=str(tmp_path), num_train_epochs=2)
    with pytest.raises(checkpointing.DamagedCheckpointError, match=rf"{checkpointing.PROGRESS_FILE}.*damaged"):
        checkpointing.resolve_resume(train_args, {})


@pytest.mark.slow
def test_random_states_accelerate_cannot_restore_fail_loudly(run_args, tmp_path):
    """Accelerate logs 'Could not load random states' at INFO (hidden by the trainer) and goes on with other random
    numbers; a whole archive that holds no RNG states passes the file checks and must fail at the load."""
    main(run_args + ["--num_train_epochs", "1"])
    checkpoint = tmp_path / "out" / "checkpoints" / "epoch_1"
    torch.save({"not": torch.zeros(1)}, checkpoint / "random_states_0.pkl")
    progress = json.loads((checkpoint / checkpointing.PROGRESS_FILE).read_text())
    del progress["files"]  # as a checkpoint saved before manifests: only the load can tell
    (checkpoint / checkpointing.PROGRESS_FILE).write_text(json.dumps(progress))
    reset_accelerate()
    with pytest.raises(checkpointing.DamagedCheckpointError, match="Could not load random states; .*random_states_0.pkl"):
        main(run_args + ["--num_train_epochs", "2", "--resume_from_checkpoint", str(checkpoint)])


# --------------------------------------------------------------------------------------------------- concurrent writers
def test_a_second_writer_into_one_output_dir_is_refused(run_args, tmp_path, monkeypatch):
    """Two runs on one --output_dir overwrote each other silently: the second is refused, naming the first."""
    import socket
    import subprocess
    import sys

    from trainers.output_lock import LOCK_FILE, OutputDirLockedError

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(  # another live process holds the lock (as a running trainer does)
        [sys.executable, "-c", "import sys, time; from trainers.output_lock import OutputDirLock; "
         "lock = OutputDirLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        _no_work(monkeypatch)
        with pytest.raises(OutputDirLockedError, match=rf"pid {holder.pid} on host '{socket.gethostname()}'"):
            main(run_args)
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.undo()
    # the holder was killed without releasing: its lock file is stale, named in a warning and taken over
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid
    reset_accelerate()
    main(run_args + ["--method", "zeroshot"])
    assert not (out / LOCK_FILE).exists()  # released at the end of the run


def test_a_stale_lock_is_named_and_another_hosts_lock_is_refused(tmp_path, caplog):
    from trainers.output_lock import LOCK_FILE, OutputDirLock, OutputDirLockedError

    dead = 2 ** 22 + 12345  # above the default pid_max: not a running process
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead, "host": __import__("socket").gethostname()}))
    lock = OutputDirLock(tmp_path)
    with caplog.at_level("WARNING", logger="capt"):
        lock.acquire()
    assert f"pid {dead}" in caplog.text and "stale" in caplog.text and LOCK_FILE in caplog.text
    with pytest.raises(OutputDirLockedError, match="another run"):  # held now, even within this process
        OutputDirLock(tmp_path).acquire()
    lock.release()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(OutputDirLockedError, match="'another-host'.*If that run is over, delete the lock file"):
        OutputDirLock(tmp_path).acquire()


# --------------------------------------------------------------------------------------------------- the final save
CRASH_DURING_SAVE = r"""
import os, sys
from dataset_scripts import atomic_io

parent, point = sys.argv[1], sys.argv[2]

def writer(name):
    def write(folder):
        with open(os.path.join(folder, "weights"), "w") as handle:
            handle.write("new")
        if point == f"writing {name}":
            os._exit(9)
    return write

if point == "after the commit":
    atomic_io._complete_commit = lambda parent: os._exit(9)
if point == "between the swaps":
    real_replace_directory, swapped = atomic_io.replace_directory, []
    def replace_then_crash(new, final):
        if swapped:
            os._exit(9)
        swapped.append(final)
        real_replace_directory(new, final)
    atomic_io.replace_directory = replace_then_crash
if point == "inside a swap":  # os.replace calls: the journal, old model/ set aside, then the new one moved in
    real_replace, calls = os.replace, []
    def replace_or_crash(*args):
        calls.append(args)
        if len(calls) == 3:
            os._exit(9)
        real_replace(*args)
    os.replace = replace_or_crash
atomic_io.replace_directories_together(parent, {"model": writer("model"), "adapter": writer("adapter")})
"""


@pytest.mark.parametrize("point, survivors", [
    ("writing model", "old"), ("writing adapter", "old"),
    ("after the commit", "new"), ("between the swaps", "new"), ("inside a swap", "new"),
])
def test_a_kill_during_the_final_save_leaves_all_old_or_all_new_folders(tmp_path, point, survivors):
    """A process killed (no cleanup, no finally) at several points of the final save: after the next start's
    recovery, model/ and adapter/ are both the old ones or both the new ones, and no staging folder is left."""
    import subprocess
    import sys

    from dataset_scripts.atomic_io import recover_directories

    for name in ("model", "adapter"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_text("old")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    crashed = subprocess.run([sys.executable, "-c", CRASH_DURING_SAVE, str(tmp_path), point], cwd=root)
    assert crashed.returncode == 9
    recover_directories(tmp_path, ["model", "adapter"])
    assert [(tmp_path / name / "weights").read_text() for name in ("model", "adapter")] == [survivors] * 2
    assert sorted(os.listdir(tmp_path)) == ["adapter", "model"]


def test_a_failure_writing_the_adapter_keeps_the_previous_model_and_adapter(run_args, tmp_path, monkeypatch):
    """A full disk while adapter/ was written left the new model/ beside the old adapter/."""
    import errno

    from modeling_capt.modeling_prompt_clip import PromptCLIPModel

    main(run_args)
    out = tmp_path / "out"
    before = {name: sorted((p.name, p.read_bytes()) for p in (out / name).iterdir()) for name in ("model", "adapter")}

    def disk_full(self, folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PromptCLIPModel, "save_adapter", disk_full)
    reset_accelerate()
    with pytest.raises(OSError, match="No space left"):
        main(run_args + ["--learning_rate", "0.01"])  # other weights than the first run's
    after = {name: sorted((p.name, p.read_bytes()) for p in (out / name).iterdir()) for name in ("model", "adapter")}
    assert after == before
    assert json.loads((out / "metrics.json").read_text())  # the new run's results are kept
    assert not [name for name in os.listdir(out) if name.startswith(".")]


def test_too_little_free_space_is_refused_before_the_final_save_keeping_the_metrics(run_args, tmp_path, monkeypatch):
    """A simulated nearly full disk: the final save is refused before it writes, naming the space it needs, and the
    finished run's metrics.json is already written."""
    from collections import namedtuple

    from trainers import train_capt

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(train_capt.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(OSError, match=r"Not enough disk space .* needs about .* MiB, 0.0 MiB are free"):
        main(run_args)
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text())["method"] == "coop"
    assert not (out / "model").exists() and not (out / "adapter").exists()
    assert not [name for name in os.listdir(out) if name.startswith(".")]


def test_staging_folders_of_a_crashed_save_are_removed_on_start(run_args, tmp_path):
    out = tmp_path / "out"
    (out / ".model.tmp-dead1234").mkdir(parents=True)
    (out / ".model.tmp-dead1234" / "model.safetensors").write_bytes(b"half")
    (out / ".adapter.tmp-dead5678").mkdir()
    main(run_args + ["--method", "zeroshot"])
    assert not [name for name in os.listdir(out) if name.startswith(".")]


FILL_A_SMALL_DISK = r"""
import errno, os, sys
from dataset_scripts import atomic_io
from dataset_scripts.atomic_io import replace_directories_together, write_json_atomic

parent = sys.argv[1]
for name in ("model", "adapter"):
    os.makedirs(os.path.join(parent, name))
    with open(os.path.join(parent, name, "weights"), "w") as handle:
        handle.write("old")

def writer(size):
    def write(folder):
        with open(os.path.join(folder, "weights"), "wb") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
    return write

write_json_atomic(os.path.join(parent, "metrics.json"), {"finished": True})
try:  # the model fits, the adapter does not
    replace_directories_together(parent, {"model": writer(600 * 1024), "adapter": writer(4 * 2**20)})
except OSError as err:
    assert err.errno == errno.ENOSPC, err
    print("ENOSPC", flush=True)
print(sorted(os.listdir(parent)), [open(os.path.join(parent, n, "weights")).read() for n in ("model", "adapter")])
"""


@pytest.mark.slow
def test_a_real_full_filesystem_during_the_final_save(tmp_path):
    """A 1 MiB tmpfs (mounted in a user and mount namespace, where the system allows one): the disk fills while
    adapter/ is written; the old folders and metrics.json are kept and no staging folder is left."""
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("no unshare: cannot make a small filesystem here (the simulated ENOSPC tests cover this)")
    disk = tmp_path / "disk"
    disk.mkdir()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {disk}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({probe.stderr.decode().strip()[:100]})")
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" -c "$3" "$1"', "sh",
         str(disk), sys.executable, FILL_A_SMALL_DISK],
        capture_output=True, text=True, cwd=root,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ENOSPC", "['adapter', 'metrics.json', 'model'] ['old', 'old']"]
