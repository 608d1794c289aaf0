"""Atomic writes: a finished file or folder replaces the old one in one step, and a failure keeps the old one."""

import os

import pytest

from dataset_scripts import atomic_io
from dataset_scripts.atomic_io import make_staging_dir, replace_directory, write_json_atomic, write_text_atomic


def test_write_text_atomic_replaces_the_file_with_the_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_text_atomic(path, "old")
    write_json_atomic(path, {"x": 1})
    assert path.read_text() == '{\n  "x": 1\n}'
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~atomic_io.current_umask()
    assert os.listdir(path.parent) == ["a.json"]  # no temporary file left


def test_write_text_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.txt"
    write_text_atomic(path, "old")
    with pytest.raises(TypeError):
        write_text_atomic(path, None)  # not text: fails while writing the temporary file
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_replace_directory_swaps_in_the_staged_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staged = make_staging_dir(final)
    assert os.path.dirname(staged) == str(tmp_path)
    assert os.stat(staged).st_mode & 0o777 == 0o777 & ~atomic_io.current_umask()
    (tmp_path / os.path.basename(staged) / "new.txt").write_text("new")
    replace_directory(staged, final)
    assert os.listdir(final) == ["new.txt"]
    assert os.listdir(tmp_path) == ["out"]  # the old folder is gone, no staging folder left


def test_replace_directory_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staged = make_staging_dir(final)
    real_replace = os.replace
    calls = []

    def failing_second_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old folder moved aside, then moving the new one in fails
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic_io.os, "replace", failing_second_replace)
    with pytest.raises(OSError, match="disk full"):
        replace_directory(staged, final)
    assert (final / "old.txt").read_text() == "old"


def test_a_folder_written_with_safetensors_gets_the_usual_permissions(tmp_path):
    """safetensors writes 0600 files: the weights of model/, adapter/ and checkpoints were private, the rest 0644."""
    import torch
    from safetensors.torch import save_file

    def write(folder):
        save_file({"w": torch.zeros(2)}, os.path.join(folder, "model.safetensors"))
        with open(os.path.join(folder, "config.json"), "w") as handle:
            handle.write("{}")

    atomic_io.write_directory_atomic(tmp_path / "model", write)
    expected = 0o666 & ~atomic_io.current_umask()
    for name in ("model.safetensors", "config.json"):
        assert os.stat(tmp_path / "model" / name).st_mode & 0o777 == expected, name
