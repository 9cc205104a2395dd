"""Where salience heads come from: a local file, or a Hugging Face Hub repo downloaded into a folder.

Offline mode (``HF_HUB_OFFLINE=1``) is honoured: a file already in the folder is used, anything
else fails with a message that says what to do, never a silent fallback to another head.
"""

from __future__ import annotations

import os
import re

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hub_local_dir(root: str, repo_id: str) -> str:
    """Downloads of ``owner/name`` go to ``root/owner--name/`` (visible to the local file list)."""
    return os.path.join(root, repo_id.replace("/", "--"))


def download_head(repo_id: str, filename: str, local_root: str, revision: str | None = None) -> str:
    """Fetch ``filename`` from ``repo_id`` into ``local_root``; returns the local path."""
    repo_id, filename = repo_id.strip(), filename.strip()
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"Hub repo id must look like 'owner/name', got {repo_id!r}")
    if not filename.endswith(".safetensors"):
        raise ValueError(f"salience heads are .safetensors files, got {filename!r}")
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    local_dir = hub_local_dir(local_root, repo_id)
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision or None, local_dir=local_dir)
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise RuntimeError(
                f"Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1) and {repo_id}/{filename} is not in "
                f"{local_dir}. Download it once while online, or copy the file there.") from None
        raise RuntimeError(f"could not reach the Hugging Face Hub for {repo_id}/{filename}, and it is not in "
                           f"{local_dir}. Check your connection or copy the file there.") from None
    except RepositoryNotFoundError:
        raise RuntimeError(f"Hub repo {repo_id!r} does not exist or is private (log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise RuntimeError(f"revision {revision!r} not found in Hub repo {repo_id!r}") from None
    except EntryNotFoundError:
        raise RuntimeError(f"file {filename!r} not found in Hub repo {repo_id!r}") from None
