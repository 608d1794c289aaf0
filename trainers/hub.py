"""Uploads to the Hugging Face Hub through the real `huggingface_hub` client.

The Hub cannot be reached from the machines this package is developed on, so the tests replace `HfApi` and check
the folder and the arguments that would be sent.
"""

from __future__ import annotations

import logging
import os

from huggingface_hub import HfApi


logger = logging.getLogger(__name__)


def push_folder_to_hub(folder: str, repo_id: str, private: bool = False, repo_type: str = "model",
                       commit_message: str | None = None, token: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it; returns the commit URL (or what the client returns)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Nothing to push: {folder} is not a folder")
    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=True)
    logger.info("uploading %s to %s (%s)", folder, repo_id, repo_type)
    return api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        repo_type=repo_type,
        commit_message=commit_message or f"Upload {os.path.basename(os.path.normpath(folder))} with capt",
    )
