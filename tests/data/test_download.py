"""download() against a local fake of the Hugging Face Hub: layout, resume, checksums, bounds.

The fake serves the three kinds of request huggingface_hub makes for a verified download:
``GET /api/datasets/{repo}/revision/{rev}`` (resolve the commit), ``POST
/api/datasets/{repo}/paths-info/{commit}`` (sizes, git blob ids and LFS sha256), and ``HEAD``/``GET
/datasets/{repo}/resolve/{commit}/{path}`` with the ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``
and ``X-Linked-Size`` headers. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import pytest

from pgolf.data.download import dataset_name_for_variant, download, local_path_for_remote
from pgolf.data.shards import HEADER_BYTES, read_shard, write_shard
from pgolf.errors import PgolfError

REPO = "tester/parameter-golf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATASET = "fineweb10B_sp1024"
LFS_SUFFIXES = (".bin", ".model", ".jsonl")


def shard_bytes(tmp: Path, tokens: np.ndarray) -> bytes:
    path = tmp / "scratch.bin"
    write_shard(path, tokens)
    return path.read_bytes()


def export_manifest(files_val: int, files_train: int) -> bytes:
    manifest = {
        "version": "10B",
        "datasets": [
            {
                "name": DATASET,
                "tokenizer_name": "sp_bpe_1024",
                "vocab_size": 1024,
                "stats": {"files_val": files_val, "files_train": files_train},
            }
        ],
        "tokenizers": [
            {
                "name": "sp_bpe_1024",
                "model_path": "tokenizers/fineweb_1024_bpe.model",
                "vocab_path": "tokenizers/fineweb_1024_bpe.vocab",
            }
        ],
    }
    return json.dumps(manifest).encode()


class FakeHub:
    """Repo files (what the Hub records) and, per path, optionally different bytes actually served."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.served_override: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def record(self, method: str, path: str) -> None:
        with self.lock:
            self.requests.append((method, path))

    def body_requests(self) -> list[str]:
        """Paths whose bytes (GET on /resolve/) were asked for."""
        return [p for m, p in self.requests if m == "GET" and "/resolve/" in p]

    def entry(self, path: str) -> dict:
        data = self.files[path]
        git_oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        item = {"type": "file", "path": path, "size": len(data), "oid": git_oid}
        if path.endswith(LFS_SUFFIXES):
            item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return item


def make_handler(hub: FakeHub):
    repo_api = f"/api/datasets/{REPO}"
    resolve = f"/datasets/{REPO}/resolve/"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def send_json(self, payload) -> None:
            self.send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

        def do_GET(self):
            self.route()

        def do_HEAD(self):
            self.route()

        def do_POST(self):
            self.route()

        def route(self):
            url = urlparse(self.path)
            path = unquote(url.path)
            hub.record(self.command, path)
            if path.startswith(f"{repo_api}/revision/"):
                return self.send_json({"id": REPO, "sha": COMMIT, "private": False})
            if path == f"{repo_api}/paths-info/{COMMIT}" and self.command == "POST":
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                return self.send_json([hub.entry(p) for p in form.get("paths", []) if p in hub.files])
            if path.startswith(resolve + COMMIT + "/"):
                return self.serve_file(path[len(resolve + COMMIT + "/") :])
            self.send(404, b"{}", {"X-Error-Code": "RepoNotFound", "X-Error-Message": "not found"})

        def serve_file(self, name: str):
            if name not in hub.files:
                return self.send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
            entry = hub.entry(name)
            body = hub.served_override.get(name, hub.files[name])
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{entry["oid"]}"'}
            if "lfs" in entry:
                headers["X-Linked-Etag"] = f'"{entry["lfs"]["oid"]}"'
                headers["X-Linked-Size"] = str(len(body))
            self.send(200, body, headers)

    return Handler


@pytest.fixture
def repo_files(tmp_path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {"datasets/manifest.json": export_manifest(files_val=1, files_train=3)}
    prefix = f"datasets/datasets/{DATASET}"
    files[f"{prefix}/fineweb_val_000000.bin"] = shard_bytes(tmp_path, rng.integers(0, 1024, 700))
    for i in range(3):
        files[f"{prefix}/fineweb_train_{i:06d}.bin"] = shard_bytes(tmp_path, rng.integers(0, 1024, 500 + i))
    files["datasets/tokenizers/fineweb_1024_bpe.model"] = b"fake model bytes " * 20
    files["datasets/tokenizers/fineweb_1024_bpe.vocab"] = b"<pad>\t0\n<s>\t0\n"
    files["datasets/docs_selected.jsonl"] = b'{"text": "hello"}\n'
    files["datasets/docs_selected.source_manifest.json"] = b'{"num_docs": 1}'
    return files


@pytest.fixture
def hub(repo_files, monkeypatch, tmp_path):
    """A running fake Hub with huggingface_hub pointed at it (and at a private, empty cache)."""
    import huggingface_hub.constants as hf_constants

    fake = FakeHub(repo_files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", REPO)
    monkeypatch.delenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", raising=False)
    # huggingface_hub reads these at import time, so the environment alone may come too late.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    yield fake
    server.shutdown()
    server.server_close()


def fetch(out: Path, **kwargs):
    kwargs.setdefault("train_shards", 2)
    return download(out=out, token=False, progress=False, **kwargs)


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".download-") or p.suffix in (".incomplete", ".tmp")]


def test_full_download_lays_files_out_like_the_challenge_script(hub, repo_files, tmp_path):
    out = tmp_path / "data"
    result = fetch(out)
    dataset_dir = out / "datasets" / DATASET
    assert result.commit == COMMIT
    assert result.dataset_dir == dataset_dir
    assert sorted(p.name for p in dataset_dir.iterdir()) == [
        "fineweb_train_000000.bin",
        "fineweb_train_000001.bin",
        "fineweb_val_000000.bin",
    ]
    for name in ("fineweb_val_000000.bin", "fineweb_train_000001.bin"):
        assert (dataset_dir / name).read_bytes() == repo_files[f"datasets/datasets/{DATASET}/{name}"]
    assert read_shard(dataset_dir / "fineweb_val_000000.bin").size == 700
    assert (out / "manifest.json").read_bytes() == repo_files["datasets/manifest.json"]
    assert result.tokenizer_files == [
        out / "tokenizers" / "fineweb_1024_bpe.model",
        out / "tokenizers" / "fineweb_1024_bpe.vocab",
    ]
    assert (out / "tokenizers" / "fineweb_1024_bpe.vocab").read_bytes() == repo_files[
        "datasets/tokenizers/fineweb_1024_bpe.vocab"
    ]
    assert not (out / "docs_selected.jsonl").exists()
    assert len(result.downloaded) == 6 and result.skipped == []
    assert leftovers(out) == []


def test_with_docs_fetches_the_docs_and_their_sidecar(hub, repo_files, tmp_path):
    out = tmp_path / "data"
    fetch(out, train_shards=0, with_docs=True)
    assert (out / "docs_selected.jsonl").read_bytes() == repo_files["datasets/docs_selected.jsonl"]
    assert (out / "docs_selected.source_manifest.json").is_file()
    assert not list((out / "datasets" / DATASET).glob("fineweb_train_*"))


def test_second_run_downloads_nothing(hub, tmp_path):
    out = tmp_path / "data"
    fetch(out)
    first_bodies = len(hub.body_requests())
    assert first_bodies == 6
    again = fetch(out)
    assert len(hub.body_requests()) == first_bodies
    assert again.downloaded == [] and len(again.skipped) == 6


def test_resume_fetches_only_what_is_missing_or_damaged(hub, tmp_path):
    out = tmp_path / "data"
    fetch(out, train_shards=1)
    shard = out / "datasets" / DATASET / "fineweb_val_000000.bin"
    damaged = bytearray(shard.read_bytes())
    damaged[HEADER_BYTES + 3] ^= 0xFF  # same size, valid header: only the checksum can tell
    shard.write_bytes(bytes(damaged))
    before = len(hub.body_requests())
    result = fetch(out, train_shards=3)
    fetched = hub.body_requests()[before:]
    assert sorted(Path(p).name for p in fetched) == [
        "fineweb_train_000001.bin",
        "fineweb_train_000002.bin",
        "fineweb_val_000000.bin",
    ]
    assert len(result.downloaded) == 3
    assert shard.read_bytes() != bytes(damaged)


def test_corrupt_remote_shard_is_an_error_and_leaves_no_file(hub, repo_files, tmp_path):
    name = f"datasets/datasets/{DATASET}/fineweb_train_000001.bin"
    served = bytearray(repo_files[name])
    served[-1] ^= 0x01
    hub.served_override[name] = bytes(served)
    out = tmp_path / "data"
    with pytest.raises(PgolfError, match=r"fineweb_train_000001\.bin: downloaded file is corrupt \(sha256") as err:
        fetch(out)
    assert "\n" not in str(err.value)
    assert not (out / "datasets" / DATASET / "fineweb_train_000001.bin").exists()
    assert (out / "datasets" / DATASET / "fineweb_train_000000.bin").is_file()  # earlier files are kept
    assert leftovers(out) == []


def test_remote_shard_with_bad_header_is_an_error(hub, repo_files, tmp_path):
    name = f"datasets/datasets/{DATASET}/fineweb_val_000000.bin"
    bad = bytearray(repo_files[name])
    bad[0:4] = (123).to_bytes(4, "little")
    hub.files[name] = bytes(bad)  # the Hub's checksum matches: the repo itself holds a broken shard
    out = tmp_path / "data"
    with pytest.raises(PgolfError, match="bad shard magic 123"):
        fetch(out)
    assert not (out / "datasets" / DATASET / "fineweb_val_000000.bin").exists()
    assert leftovers(out) == []


def test_too_many_train_shards_is_an_error(hub, tmp_path):
    with pytest.raises(PgolfError, match=f"{DATASET} has 3 train shards, 4 requested"):
        fetch(tmp_path / "data", train_shards=4)
    assert hub.body_requests() == [f"/datasets/{REPO}/resolve/{COMMIT}/datasets/manifest.json"]


def test_variant_missing_from_the_manifest_is_an_error(hub, tmp_path):
    with pytest.raises(PgolfError, match="no dataset fineweb10B_sp4096 \\(has: fineweb10B_sp1024\\)"):
        fetch(tmp_path / "data", variant="sp4096")


def test_file_named_by_the_manifest_but_absent_remotely_is_an_error(hub, tmp_path):
    hub.files["datasets/manifest.json"] = export_manifest(files_val=2, files_train=3)
    with pytest.raises(
        PgolfError, match="remote file datasets/datasets/fineweb10B_sp1024/fineweb_val_000001.bin not found"
    ):
        fetch(tmp_path / "data")


def test_unknown_repo_is_an_error(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "nobody/nothing")
    with pytest.raises(PgolfError, match="nobody/nothing: cannot resolve revision 'main'"):
        fetch(tmp_path / "data")


def test_offline_mode_is_an_error(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PgolfError, match="HF_HUB_OFFLINE"):
        fetch(tmp_path / "data")


@pytest.mark.parametrize("variant", ["sp", "spx1024", "byte256", "", "SP1024"])
def test_bad_variant_names_are_rejected(variant):
    with pytest.raises(PgolfError, match="expected byte260 or sp<VOCAB_SIZE>"):
        dataset_name_for_variant(variant)


def test_good_variant_names():
    assert dataset_name_for_variant("byte260") == "fineweb10B_byte260"
    assert dataset_name_for_variant("sp8192") == "fineweb10B_sp8192"


def test_negative_train_shards_is_rejected(tmp_path):
    with pytest.raises(PgolfError, match="non-negative"):
        download(train_shards=-1, out=tmp_path)


def test_local_paths_drop_the_remote_root(tmp_path):
    assert local_path_for_remote("datasets/datasets/x/a.bin", "datasets", tmp_path) == tmp_path / "datasets/x/a.bin"
    assert local_path_for_remote("datasets/manifest.json", "datasets", tmp_path) == tmp_path / "manifest.json"
    assert local_path_for_remote("tokenizers/t.model", "", tmp_path) == tmp_path / "tokenizers/t.model"
    with pytest.raises(PgolfError, match="does not map"):
        local_path_for_remote("datasets/../../etc/passwd", "datasets", tmp_path)


def test_cli_download_too_many_shards_exits_2_with_one_line(hub, tmp_path, run_pgolf):
    code, _, err = run_pgolf(["data", "download", "--train-shards", "9", "--out", str(tmp_path / "d"), "--quiet"])
    assert code == 2
    assert err.count("\n") == 1 and "9 requested" in err


def test_cli_download_succeeds(hub, tmp_path, run_pgolf):
    code, out, _ = run_pgolf(["data", "download", "--train-shards", "1", "--out", str(tmp_path / "d"), "--quiet"])
    assert code == 0
    assert "5 file(s) downloaded" in out
