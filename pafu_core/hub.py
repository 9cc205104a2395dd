"""Where salience heads come from: a local file, or a Hugging Face Hub repo downloaded into a folder.

Every revision gets its own folder, ``root/owner--name/<revision>/``, so a file on disk always
belongs to the revision it was downloaded for. Offline mode (``HF_HUB_OFFLINE=1``) is honoured: the
requested revision's file is used if it is on disk; anything else fails with a message that says
which revisions are on disk and what to do, never a silent fallback to another head.
"""

from __future__ import annotations

import os
import re

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
#: a branch or tag name, or a commit hash: no spaces, no "..", no leading "/" or "-", nothing a path
#: could escape with
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$")
DEFAULT_REVISION = "main"


def check_repo_id(repo_id: str) -> str:
    repo_id = repo_id.strip()
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith((".", ".git")):
        raise ValueError(f"Hub repo id must look like 'owner/name' (letters, digits, '-', '_', '.'), got {repo_id!r}")
    return repo_id


def check_revision(revision: str | None) -> str:
    revision = (revision or "").strip() or DEFAULT_REVISION
    if not _REVISION.match(revision) or ".." in revision or "//" in revision or revision.endswith("/"):
        raise ValueError(f"Hub revision must be a branch, tag or commit (e.g. main, v1.0, or a 40-hex hash), "
                         f"got {revision!r}")
    return revision


def hub_local_dir(root: str, repo_id: str, revision: str = DEFAULT_REVISION) -> str:
    """Downloads of ``owner/name`` at ``revision`` go to ``root/owner--name/<revision>/``."""
    return os.path.join(root, repo_id.replace("/", "--"), revision.replace("/", "--"))


def revisions_on_disk(root: str, repo_id: str, filename: str) -> list[str]:
    repo_dir = os.path.join(root, repo_id.replace("/", "--"))
    if not os.path.isdir(repo_dir):
        return []
    return sorted(r for r in os.listdir(repo_dir) if os.path.isfile(os.path.join(repo_dir, r, filename)))


def download_head(repo_id: str, filename: str, local_root: str, revision: str | None = None) -> str:
    """Fetch ``filename`` of ``repo_id`` at ``revision`` into ``local_root``; returns the local path."""
    repo_id, revision, filename = check_repo_id(repo_id), check_revision(revision), filename.strip()
    if not filename.endswith(".safetensors") or filename.startswith(("/", "\\")) or ".." in filename:
        raise ValueError(f"salience heads are .safetensors files inside the repo, got {filename!r}")
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    local_dir = hub_local_dir(local_root, repo_id, revision)
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, local_dir=local_dir)
    except LocalEntryNotFoundError:
        on_disk = revisions_on_disk(local_root, repo_id, filename)
        have = (f" On disk: revision{'s' if len(on_disk) > 1 else ''} {', '.join(on_disk)}." if on_disk
                else " No revision of it is on disk.")
        if constants.HF_HUB_OFFLINE:
            raise RuntimeError(
                f"Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1) and {repo_id}/{filename} at revision "
                f"{revision!r} is not in {local_dir}.{have} Download it once while online, pick a revision that "
                "is on disk, or copy the file there.") from None
        raise RuntimeError(f"could not reach the Hugging Face Hub for {repo_id}/{filename} at revision {revision!r}, "
                           f"and it is not in {local_dir}.{have} Check your connection or copy the file there.") from None
    except RepositoryNotFoundError:
        raise RuntimeError(f"Hub repo {repo_id!r} does not exist or is private (log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise RuntimeError(f"revision {revision!r} not found in Hub repo {repo_id!r}") from None
    except EntryNotFoundError:
        raise RuntimeError(f"file {filename!r} not found in Hub repo {repo_id!r} at revision {revision!r}") from None
    except HFValidationError as e:
        raise ValueError(f"the Hub refused repo {repo_id!r}, revision {revision!r} or file {filename!r} as "
                         f"malformed: {str(e).splitlines()[0]}") from None
