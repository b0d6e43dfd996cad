"""Downloading the challenge's published export from the Hugging Face Hub, verified and resumable.

The remote layout and the environment variables are those of the challenge's
``cached_challenge_fineweb.py``: dataset repo ``$MATCHED_FINEWEB_REPO_ID`` (default
``willdepueoai/parameter-golf``), everything under ``$MATCHED_FINEWEB_REMOTE_ROOT_PREFIX`` (default
``datasets``): ``manifest.json``, ``datasets/fineweb10B_<variant>/fineweb_{val,train}_NNNNNN.bin``
and the tokenizer files named by the manifest. Locally the prefix is dropped, so files land in
``OUT/manifest.json``, ``OUT/datasets/fineweb10B_<variant>/`` and ``OUT/tokenizers/``.

Every file is pinned to one commit (resolved once, so manifest and shards always match), and is
checked against the Hub's own record of it: its size, then the SHA-256 of LFS files or the git blob
SHA-1 of small ones; shards also get their header (magic, version, size) checked. A file already at
its destination that passes these checks is skipped, which makes an interrupted run resumable. New
files are downloaded into a staging folder inside ``OUT`` and renamed into place only once
verified, so no partial or corrupt file is ever left at a destination.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pgolf.data.shards import file_sha256, read_header
from pgolf.errors import PgolfError

REPO_ID_ENV = "MATCHED_FINEWEB_REPO_ID"
DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT_ENV = "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX"
DEFAULT_REMOTE_ROOT = "datasets"
DOCS_FILES = ("docs_selected.jsonl", "docs_selected.source_manifest.json")
DEFAULT_TRAIN_SHARDS = 80  # the challenge script's default
SHARD_NAME = re.compile(r"fineweb_(train|val)_\d{6}\.bin")
PATHS_PER_REQUEST = 100  # files described per paths-info call, well under the Hub's page size


@dataclass(frozen=True)
class RemoteFile:
    """What the Hub records about one file at the pinned commit."""

    path: str
    size: int
    sha256: str | None  # LFS files
    git_sha1: str | None  # the git blob id, the checksum of small (non-LFS) files


@dataclass
class DownloadResult:
    repo_id: str
    commit: str
    out: Path
    dataset_dir: Path
    tokenizer_files: list[Path]
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0

    def summary(self) -> str:
        return (
            f"{self.repo_id}@{self.commit[:12]}: {len(self.downloaded)} file(s) downloaded "
            f"({self.bytes_downloaded} bytes), {len(self.skipped)} already present and verified; "
            f"shards in {self.dataset_dir}"
        )


def dataset_name_for_variant(variant: str) -> str:
    """``byte260`` or ``spNNNN`` to the export's dataset folder name ``fineweb10B_<variant>``."""
    if variant == "byte260" or re.fullmatch(r"sp[0-9]+", variant or ""):
        return f"fineweb10B_{variant}"
    raise PgolfError(f"variant {variant!r}: expected byte260 or sp<VOCAB_SIZE> such as sp1024")


def local_path_for_remote(remote_path: str, remote_root: str, out: Path) -> Path:
    """The challenge script's mapping: drop the remote root prefix, keep the rest under ``out``."""
    parts = PurePosixPath(remote_path).parts
    if remote_root and parts[:1] == (remote_root,):
        parts = parts[1:]
    if not parts or any(p in ("..", "") for p in parts) or PurePosixPath(remote_path).is_absolute():
        raise PgolfError(f"{remote_path}: remote path does not map to a file under {out}")
    return out.joinpath(*parts)


def remote_join(remote_root: str, relative: str) -> str:
    return f"{remote_root}/{relative}" if remote_root else relative


# ---------------------------------------------------------------------------------------------
# Checking files against the Hub's record


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's contents, which the Hub reports for non-LFS files."""
    digest = hashlib.sha1()
    digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_problem(path: Path, remote: RemoteFile) -> str | None:
    """Why a local file is not the remote one (size, shard header, checksum), or None if it is."""
    size = path.stat().st_size
    if size != remote.size:
        return f"size {size} bytes, the Hub says {remote.size}"
    if SHARD_NAME.fullmatch(path.name):
        try:
            read_header(path)
        except PgolfError as exc:
            return str(exc).removeprefix(f"{path}: ")
    if remote.sha256 is not None:
        actual = file_sha256(path)
        if actual != remote.sha256:
            return f"sha256 {actual}, the Hub says {remote.sha256}"
    elif remote.git_sha1 is not None:
        actual = git_blob_sha1(path)
        if actual != remote.git_sha1:
            return f"git blob sha1 {actual}, the Hub says {remote.git_sha1}"
    return None


# ---------------------------------------------------------------------------------------------
# Talking to the Hub


def _hub_errors() -> tuple[type[BaseException], ...]:
    import httpx
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    return (OSError, httpx.HTTPError, EntryNotFoundError, HFValidationError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Hub:
    """One dataset repo at one resolved commit, with every library error turned into a PgolfError."""

    def __init__(self, repo_id: str, revision: str, endpoint: str | None, token, progress: bool):
        from huggingface_hub import HfApi, constants

        if constants.is_offline_mode():
            raise PgolfError(f"{repo_id}: HF_HUB_OFFLINE is set, downloads are disabled")
        self.repo_id = repo_id
        self.endpoint = endpoint
        self.token = token
        self.progress = progress
        self.api = HfApi(endpoint=endpoint, token=token)
        try:
            self.commit = self.api.dataset_info(repo_id, revision=revision).sha
        except _hub_errors() as exc:
            raise PgolfError(
                f"{repo_id}: cannot resolve revision {revision!r} of the dataset repo: {_first_line(exc)}"
            ) from None
        if not self.commit:
            raise PgolfError(f"{repo_id}: the Hub returned no commit for revision {revision!r}")

    def describe(self, paths: list[str]) -> dict[str, RemoteFile]:
        """Size and checksum of each path at the pinned commit; a missing path is an error."""
        found: dict[str, RemoteFile] = {}
        for start in range(0, len(paths), PATHS_PER_REQUEST):
            found.update(self._describe_batch(paths[start : start + PATHS_PER_REQUEST]))
        missing = [p for p in paths if p not in found]
        if missing:
            raise PgolfError(f"{self.repo_id}@{self.commit[:12]}: remote file {missing[0]} not found")
        return found

    def _describe_batch(self, paths: list[str]) -> dict[str, RemoteFile]:
        try:
            infos = self.api.get_paths_info(self.repo_id, paths, revision=self.commit, repo_type="dataset")
        except _hub_errors() as exc:
            raise PgolfError(f"{self.repo_id}: cannot list files: {_first_line(exc)}") from None
        found = {}
        for info in infos:
            if hasattr(info, "size"):  # folders have no size and cannot be downloaded
                lfs = getattr(info, "lfs", None)
                found[info.path] = RemoteFile(info.path, int(info.size), lfs.sha256 if lfs else None, info.blob_id)
        return found

    def fetch_to(self, remote: RemoteFile, staging: Path) -> Path:
        """Download one file into ``staging`` (huggingface_hub deletes its own partial files)."""
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download(
                    self.repo_id,
                    remote.path,
                    repo_type="dataset",
                    revision=self.commit,
                    local_dir=staging,
                    endpoint=self.endpoint,
                    token=self.token,
                    tqdm_class=None if self.progress else _silent_bar_class(),
                )
            )
        except _hub_errors() as exc:
            raise PgolfError(f"{self.repo_id}/{remote.path}: download failed: {_first_line(exc)}") from None


def _silent_bar_class():
    from tqdm import tqdm

    class SilentBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentBar


# ---------------------------------------------------------------------------------------------
# The job


def read_export_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PgolfError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise PgolfError(f"{path}: manifest is not a JSON object")
    return manifest


def files_for_variant(
    manifest: dict, manifest_path: Path, dataset: str, train_shards: int, remote_root: str
) -> tuple[list[str], list[str]]:
    """Remote paths of the variant's val and first ``train_shards`` train shards, and of its tokenizer files."""
    entry = next((d for d in manifest.get("datasets", []) if isinstance(d, dict) and d.get("name") == dataset), None)
    if entry is None:
        names = [d.get("name") for d in manifest.get("datasets", []) if isinstance(d, dict)]
        raise PgolfError(f"{manifest_path}: no dataset {dataset} (has: {', '.join(map(str, names)) or 'none'})")
    stats = entry.get("stats") or {}
    try:
        files_train, files_val = int(stats["files_train"]), int(stats["files_val"])
    except (KeyError, TypeError, ValueError):
        raise PgolfError(f"{manifest_path}: dataset {dataset} lacks stats.files_train/files_val") from None
    if train_shards > files_train:
        raise PgolfError(f"{manifest_path}: {dataset} has {files_train} train shards, {train_shards} requested")
    tokenizer_name = entry.get("tokenizer_name")
    tokenizer = next(
        (t for t in manifest.get("tokenizers", []) if isinstance(t, dict) and t.get("name") == tokenizer_name), None
    )
    if tokenizer is None:
        raise PgolfError(f"{manifest_path}: tokenizer {tokenizer_name!r} of {dataset} is not in the manifest")
    artifacts = [str(tokenizer[k]) for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
    if not artifacts:
        raise PgolfError(f"{manifest_path}: tokenizer {tokenizer_name!r} names no files to download")
    prefix = remote_join(remote_root, f"datasets/{dataset}")
    shards = [f"{prefix}/fineweb_val_{i:06d}.bin" for i in range(files_val)]
    shards += [f"{prefix}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    return shards, [remote_join(remote_root, a) for a in artifacts]


class Fetcher:
    """Brings remote files to their destinations, skipping verified ones, through one staging folder."""

    def __init__(self, hub: Hub, out: Path, remote_root: str, result: DownloadResult, progress: bool):
        self.hub = hub
        self.out = out
        self.remote_root = remote_root
        self.result = result
        self.progress = progress
        self.staging = Path(tempfile.mkdtemp(dir=out, prefix=".download-"))

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def say(self, message: str) -> None:
        if self.progress:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def fetch_all(self, paths: list[str]) -> list[Path]:
        infos = self.hub.describe(paths)
        return [self.fetch(infos[p], f"[{i}/{len(paths)}]") for i, p in enumerate(paths, start=1)]

    def fetch(self, remote: RemoteFile, counter: str = "") -> Path:
        dest = local_path_for_remote(remote.path, self.remote_root, self.out)
        if dest.is_file():
            problem = file_problem(dest, remote)
            if problem is None:
                self.result.skipped.append(remote.path)
                self.say(f"{counter} present, verified: {dest}")
                return dest
            self.say(f"{counter} {dest}: local copy fails verification ({problem}), downloading again")
        staged = self.hub.fetch_to(remote, self.staging)
        problem = file_problem(staged, remote)
        if problem is not None:
            staged.unlink(missing_ok=True)
            raise PgolfError(
                f"{self.hub.repo_id}/{remote.path}: downloaded file is corrupt ({problem}); nothing written to {dest}"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, dest)
        self.result.downloaded.append(remote.path)
        self.result.bytes_downloaded += remote.size
        self.say(f"{counter} downloaded, verified: {dest} ({remote.size} bytes)")
        return dest


def download(
    variant: str = "sp1024",
    train_shards: int = DEFAULT_TRAIN_SHARDS,
    out: str | os.PathLike = "data",
    with_docs: bool = False,
    *,
    repo_id: str | None = None,
    remote_root: str | None = None,
    revision: str = "main",
    endpoint: str | None = None,
    token: str | bool | None = None,
    progress: bool = True,
) -> DownloadResult:
    """Fetch the manifest, the variant's val shards, ``train_shards`` train shards and its tokenizer.

    ``repo_id``, ``remote_root`` and ``endpoint`` default to ``$MATCHED_FINEWEB_REPO_ID``,
    ``$MATCHED_FINEWEB_REMOTE_ROOT_PREFIX`` and ``$HF_ENDPOINT``, read when called.
    """
    dataset = dataset_name_for_variant(variant)
    if isinstance(train_shards, bool) or not isinstance(train_shards, int) or train_shards < 0:
        raise PgolfError(f"train shards must be a non-negative integer, got {train_shards!r}")
    repo_id = repo_id or os.environ.get(REPO_ID_ENV) or DEFAULT_REPO_ID
    remote_root = (os.environ.get(REMOTE_ROOT_ENV, DEFAULT_REMOTE_ROOT) if remote_root is None else remote_root).strip(
        "/"
    )
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    out = Path(out)

    hub = Hub(repo_id, revision, endpoint, token, progress)
    out.mkdir(parents=True, exist_ok=True)  # only once the Hub answered: no empty folder on failure
    dataset_dir = local_path_for_remote(remote_join(remote_root, f"datasets/{dataset}"), remote_root, out)
    result = DownloadResult(repo_id, hub.commit, out, dataset_dir, [])
    fetcher = Fetcher(hub, out, remote_root, result, progress)
    try:
        manifest_path = fetcher.fetch_all([remote_join(remote_root, "manifest.json")])[0]
        manifest = read_export_manifest(manifest_path)
        shards, tokenizer_files = files_for_variant(manifest, manifest_path, dataset, train_shards, remote_root)
        docs = [remote_join(remote_root, name) for name in DOCS_FILES] if with_docs else []
        local = fetcher.fetch_all(docs + shards + tokenizer_files)
    finally:
        fetcher.close()
    result.tokenizer_files = local[len(local) - len(tokenizer_files) :]
    return result
