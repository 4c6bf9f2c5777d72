"""Resumable, verified downloads.

The bytes go to `<name>.part` beside the target. An interrupted transfer leaves only the
`.part` file, which the next attempt resumes with an HTTP Range request. The file gets its
real name only after its SHA-256 matched, through an atomic rename, so a file under the real
name is always complete and correct.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Optional

import requests
from tqdm.auto import tqdm

from .errors import WeightDownloadError, WeightIntegrityError

PART_SUFFIX = ".part"
_CHUNK = 64 * 1024  # small reads: a broken connection loses at most this much
_TIMEOUT = (15, 60)  # connect, read (seconds)


def part_path(target: Path) -> Path:
    return target.with_name(target.name + PART_SUFFIX)


def manual_install_hint(url: str, target: Path) -> str:
    return (f"Download it by hand from {url} and save it as {target} "
            "(the file is checked against its SHA-256 before first use).")


def _hash_existing(part: Path) -> tuple["hashlib._Hash", int]:
    digest = hashlib.sha256()
    done = 0
    if part.exists():
        with open(part, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK * 8), b""):
                digest.update(chunk)
                done += len(chunk)
    return digest, done


def _check_free_space(folder: Path, needed: int, url: str, target: Path) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise WeightDownloadError(
            f"Not enough disk space for {target.name}: about {needed / 1e9:.2f} GB still to "
            f"download, {free / 1e9:.2f} GB free in {folder}. Free some space or choose another "
            f"folder (LAYERDIFFUSE_MODELS_DIR). {manual_install_hint(url, target)}")


def download_file(url: str, target: Path, sha256: Optional[str], approx_size: int = 0, *,
                  progress: bool = True, session: Optional[requests.Session] = None) -> str:
    """Download `url` to `target`, resuming a previous `.part`, and verify `sha256` (None or
    empty: no hash is published; the caller records the one returned). Returns the SHA-256.

    Raises WeightDownloadError (network/HTTP problems; the `.part` file is kept for resuming)
    or WeightIntegrityError (the finished download has the wrong hash; it is deleted).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
    digest, done = _hash_existing(part)
    http = session or requests.Session()
    headers = {"Range": f"bytes={done}-"} if done else {}
    hint = manual_install_hint(url, target)
    try:
        with http.get(url, stream=True, headers=headers, timeout=_TIMEOUT, allow_redirects=True) as resp:
            if resp.status_code == 416 and done:
                pass  # the .part already holds every byte; the hash check below decides
            elif resp.status_code in (200, 206):
                if resp.status_code == 200 and done:
                    digest, done = hashlib.sha256(), 0  # the server ignored the Range: restart
                length = int(resp.headers.get("Content-Length") or 0)
                total = done + length if length else max(approx_size, done)
                _check_free_space(target.parent, total - done, url, target)
                mode = "ab" if done else "wb"
                with open(part, mode) as fh, tqdm(
                    total=total or None, initial=done, unit="B", unit_scale=True,
                    desc=f"Downloading {target.name}", disable=not progress,
                ) as bar:
                    for chunk in resp.iter_content(_CHUNK):
                        fh.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            else:
                reason = {401: "the host asks for a login", 403: "access denied",
                          404: "the file is not on the host"}.get(resp.status_code, resp.reason)
                raise WeightDownloadError(
                    f"Could not download {target.name}: HTTP {resp.status_code} ({reason}) "
                    f"from {url}. {hint}")
    except requests.RequestException as exc:
        kept = f" The partial file {part} is kept; running again resumes it." if part.exists() else ""
        raise WeightDownloadError(
            f"Could not download {target.name} from {url}: the host is unreachable or the "
            f"connection broke ({type(exc).__name__}).{kept} {hint}") from None
    except OSError as exc:
        raise WeightDownloadError(f"Could not write {part}: {exc}. {hint}") from None

    actual = digest.hexdigest()
    if sha256 and actual != sha256:
        part.unlink(missing_ok=True)
        raise WeightIntegrityError(
            f"The download of {target.name} is corrupt: SHA-256 {actual}, expected {sha256}. "
            f"The bad download was deleted; run again to retry. {hint}")
    os.replace(part, target)
    return actual
