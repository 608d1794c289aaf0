"""Atomic file writes: a reader never sees half a file, and a crash leaves the previous file intact."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid


def current_umask() -> int:
    """The process's umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, then move it into place."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp_file:
            temp_file.write(text)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.chmod(temp_path, 0o666 & ~current_umask())  # mkstemp creates 0600 files
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def write_json_atomic(path: str | os.PathLike, data, indent: int | None = 2) -> None:
    """`json.dump` through [`write_text_atomic`]."""
    write_text_atomic(path, json.dumps(data, indent=indent))


def make_staging_dir(final_dir: str | os.PathLike) -> str:
    """A new empty folder beside `final_dir`, with the usual permissions, to fill and then [`replace_directory`]."""
    final_dir = os.path.abspath(os.fspath(final_dir))
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    staged = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.tmp-", dir=parent)
    os.chmod(staged, 0o777 & ~current_umask())  # mkdtemp creates 0700 folders
    return staged


def give_usual_permissions(folder: str | os.PathLike) -> None:
    """Give every file under `folder` the permissions the umask gives a new file (0644 under umask 022).

    safetensors writes its files 0600 (through a private temporary file), which left the weights of a saved model,
    adapter or checkpoint unreadable to the group and others while everything beside them was readable.
    """
    mode = 0o666 & ~current_umask()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path) and os.stat(path).st_mode & 0o777 != mode:
                os.chmod(path, mode)


def replace_directory(new_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move the finished folder `new_dir` to `final_dir`, replacing what is there.

    Its files get the usual permissions first ([`give_usual_permissions`]). The old folder is moved aside first and
    deleted only once the new one is in place; if that move fails, the old folder is put back, so a failure never
    loses an existing output.
    """
    new_dir, final_dir = os.fspath(new_dir), os.fspath(final_dir)
    give_usual_permissions(new_dir)
    if not os.path.exists(final_dir):
        os.replace(new_dir, final_dir)
        return
    name = f".{os.path.basename(final_dir)}.old-{uuid.uuid4().hex[:8]}"
    retired = os.path.join(os.path.dirname(final_dir) or ".", name)
    os.replace(final_dir, retired)
    try:
        os.replace(new_dir, final_dir)
    except BaseException:
        os.replace(retired, final_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def write_directory_atomic(final_dir: str | os.PathLike, write):
    """`write(folder)` into a new staging folder beside `final_dir`, then [`replace_directory`] it into place.

    A failure leaves the previous `final_dir` whole (and removes the staging folder), and nothing of the previous
    folder stays mixed with the new one. Returns what `write` returns.
    """
    staged = make_staging_dir(final_dir)
    try:
        result = write(staged)
        replace_directory(staged, final_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return result



#: The journal of a [`replace_directories_together`] commit, in the folders' parent.
COMMIT_JOURNAL = ".commit-journal.json"


def replace_directories_together(parent: str | os.PathLike, writers: dict) -> None:
    """Write several sibling folders (`{name: write(folder)}`) and swap them in as one step.

    Every folder is filled in its own staging folder first (where a full disk or any other failure strikes; the
    staging folders are then removed and every existing folder is left as it was). The commit point is one atomic
    write of a journal naming the staged folders; the swaps follow, and a crash among them is completed by
    [`recover_directories`] on the next start. So the folders are either all the old ones or all the new ones, never
    a new one beside an old one.
    """
    parent = os.fspath(parent)
    staged = {}
    try:
        for name, write in writers.items():
            staged[name] = make_staging_dir(os.path.join(parent, name))
            write(staged[name])
            give_usual_permissions(staged[name])
        write_json_atomic(os.path.join(parent, COMMIT_JOURNAL),
                          {name: os.path.basename(folder) for name, folder in staged.items()})
    except BaseException:
        for folder in staged.values():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    _complete_commit(parent)


def _complete_commit(parent: str) -> None:
    journal = os.path.join(parent, COMMIT_JOURNAL)
    with open(journal, encoding="utf-8") as handle:
        moves = json.load(handle)
    for name, staged_name in moves.items():
        staged = os.path.join(parent, staged_name)
        if os.path.isdir(staged):  # not yet swapped in
            replace_directory(staged, os.path.join(parent, name))
    os.remove(journal)


def recover_directories(parent: str | os.PathLike, names) -> None:
    """Make the folders `names` under `parent` whole after a crash: complete a committed
    [`replace_directories_together`], put back a folder a crash left set aside, and remove the staging and set-aside
    folders of interrupted writes (`.NAME.tmp-*`, `.NAME.old-*`)."""
    parent = os.fspath(parent)
    if not os.path.isdir(parent):
        return
    if os.path.isfile(os.path.join(parent, COMMIT_JOURNAL)):
        _complete_commit(parent)
    entries = os.listdir(parent)
    for name in names:
        final = os.path.join(parent, name)
        retired = sorted(e for e in entries if e.startswith(f".{name}.old-"))
        if retired and not os.path.exists(final):  # a crash between setting the old folder aside and the swap
            os.replace(os.path.join(parent, retired.pop()), final)
        for entry in retired + [e for e in entries if e.startswith(f".{name}.tmp-")]:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
