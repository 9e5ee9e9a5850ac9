"""Downloading models from a fake hub (tests/fakehub.py) that serves the demo models as hub repositories."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub import constants, hf_hub_download

from aipc_chat.errors import DownloadCorrupted, HubAccessDenied, HubRepoNotFound, HubUnreachable, ModelSetupError
from aipc_chat.provision.hub import (
    MANIFEST_NAME,
    PARTIAL_DIR,
    download_model,
    list_models,
    read_manifest,
    verify_manifest,
    wanted_file,
)
from aipc_chat.provision.resolve import repo_dir
from tests.fakehub import FakeHub
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

LLM = "OpenVINO/demo-llm-int4-ov"
SD = "OpenVINO/demo-sd15-ov"
GATED = "acme/gated-llm"
PRIVATE = "acme/private-llm"
READER = "hf_reader_token"  # accepted the gated repo's licence
OUTSIDER = "hf_outsider_token"  # a valid token without access
JUNK = {"README.md": b"# model card\n", "model.onnx": b"\0" * 64, "model.safetensors": b"\0" * 64,
        "sample.png": b"\x89PNG", "unet/diffusion_pytorch_model.safetensors": b"\0" * 64}
BIG = "openvino_model.bin"  # the demo LLM's largest file (LFS, served from the CDN)
SMALL_CHUNK = 64 * 1024


@pytest.fixture(autouse=True)
def _no_ambient_hub_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token from the environment or an `hf auth login` file, and not offline, whatever the developer has."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.fixture
def hub(demo_models: Path) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        fake.add_repo(LLM, demo_models / "llm", extra=JUNK)
        fake.add_repo(SD, demo_models / "image", extra=JUNK)
        fake.add_repo(GATED, demo_models / "llm", gated=True, readers={READER})
        fake.add_repo(PRIVATE, demo_models / "llm", private=True, readers={READER})
        fake.tokens.add(OUTSIDER)
        yield fake


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub writes (and can resume) in 10 MiB chunks; the demo files need smaller ones."""
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", SMALL_CHUNK)


def fetch(hub: FakeHub, models: Path, repo: str = LLM, *, kind: str = "llm", token: str | None = None,
          **kwargs: Any) -> Path:
    return download_model(repo, "main", repo_dir(models, repo, "main"), kind=kind,  # type: ignore[arg-type]
                          token=token, endpoint=hub.endpoint, **kwargs)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------- happy path


def test_public_llm_download_is_selective_verified_and_loads(hub: FakeHub, demo_models: Path,
                                                             tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    dest = fetch(hub, tmp_path, progress=lambda done, total: seen.append((done, total)))

    assert dest == tmp_path / "hub" / "OpenVINO--demo-llm-int4-ov" / "main"
    source = demo_models / "llm"
    expected = files_under(source)  # every demo file is one the LLM pipeline reads (or a .json)
    assert files_under(dest) == expected | {MANIFEST_NAME}  # no README, ONNX, safetensors or pictures
    manifest = read_manifest(dest)
    assert manifest is not None
    assert manifest["repo"] == LLM and manifest["revision"] == "main" and manifest["kind"] == "llm"
    assert manifest["commit"] == hub.repos[LLM].commit
    assert manifest["files"][BIG]["lfs"] is True and manifest["files"]["config.json"]["lfs"] is False
    assert all(info["sha256"] == sha256(source / rel) for rel, info in manifest["files"].items())
    newest = max(p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    assert (dest / MANIFEST_NAME).stat().st_mtime_ns >= newest  # written last
    assert verify_manifest(dest, full=True) == []
    assert not (dest / PARTIAL_DIR).exists()

    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
    # LFS files come from the CDN (another origin) and no token travels there.
    assert [s.server for s in hub.downloads(BIG)] == ["cdn"]
    assert not any(s.authorized for s in hub.log if s.server == "cdn")

    import openvino_genai as ov_genai

    pipe = ov_genai.LLMPipeline(str(dest), "CPU")
    assert pipe.generate("Hello", max_new_tokens=8, do_sample=False)


def test_image_download_takes_each_component_and_skips_the_rest(hub: FakeHub, demo_models: Path,
                                                                tmp_path: Path) -> None:
    dest = fetch(hub, tmp_path, SD, kind="image")

    wanted = files_under(demo_models / "image") - {"aipc_demo.json"}
    assert files_under(dest) == wanted | {MANIFEST_NAME}
    assert verify_manifest(dest, full=True) == []


def test_a_complete_download_only_asks_for_the_commit(hub: FakeHub, tmp_path: Path) -> None:
    fetch(hub, tmp_path)
    before = len(hub.log)
    calls: list[tuple[int, int]] = []
    fetch(hub, tmp_path, progress=lambda done, total: calls.append((done, total)))

    assert [(s.method, s.path) for s in hub.log[before:]] == [("GET", f"/api/models/{LLM}/revision/main")]
    assert calls and calls[-1][0] == calls[-1][1]

    commit = hub.repos[LLM].commit  # a pinned commit cannot change: once complete, the hub is not asked at all
    pinned = download_model(LLM, commit, tmp_path / "pinned", kind="llm", token=None, endpoint=hub.endpoint)
    before = len(hub.log)
    assert download_model(LLM, commit, pinned, kind="llm", token=None, endpoint=hub.endpoint) == pinned
    assert hub.log[before:] == []


def test_file_list_from_the_tree_when_model_info_has_no_sizes(hub: FakeHub, demo_models: Path,
                                                              tmp_path: Path) -> None:
    hub.add_repo("acme/old-style", demo_models / "llm", file_metadata=False)
    dest = fetch(hub, tmp_path, "acme/old-style")

    assert any("/tree/" in s.path for s in hub.log)
    assert verify_manifest(dest, full=True) == []


@pytest.mark.parametrize(
    ("path", "kind", "wanted"),
    [
        ("openvino_model.bin", "llm", True),
        ("openvino_detokenizer.xml", "llm", True),
        ("tokenizer_config.json", "llm", True),
        ("chat_template.jinja", "llm", True),
        ("model.safetensors", "llm", False),
        ("README.md", "llm", False),
        ("onnx/model.onnx", "llm", False),
        ("model_index.json", "image", True),
        ("unet/openvino_model.bin", "image", True),
        ("vae_decoder/config.json", "image", True),
        ("tokenizer/merges.txt", "image", True),
        ("scheduler/scheduler_config.json", "image", True),
        ("unet/diffusion_pytorch_model.safetensors", "image", False),
        ("unet/model.onnx", "image", False),
        ("config.json", "image", False),
        ("sample.png", "image", False),
    ],
)
def test_which_files_are_wanted(path: str, kind: str, wanted: bool) -> None:
    assert wanted_file(path, kind) is wanted  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- tokens, gating


def test_gated_repo_needs_an_accepted_token(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubAccessDenied, match=r"gated.*accept its licence.*HUGGINGFACE_TOKEN \(or HF_TOKEN\)"):
        fetch(hub, tmp_path, GATED)
    with pytest.raises(HubAccessDenied, match=r"token given has no access.*accept the licence"):
        fetch(hub, tmp_path, GATED, token=OUTSIDER)
    with pytest.raises(HubAccessDenied, match=r"rejected the token \(invalid or expired\).*HUGGINGFACE_TOKEN"):
        fetch(hub, tmp_path, GATED, token="hf_not_a_real_token")
    assert read_manifest(repo_dir(tmp_path, GATED, "main")) is None
    served_before = len(hub.log)

    dest = fetch(hub, tmp_path, GATED, token=READER)

    assert verify_manifest(dest) == []
    calls = hub.log[served_before:]
    assert all(s.authorized for s in calls if s.server == "hub")
    assert not any(s.authorized for s in calls if s.server == "cdn") and any(s.server == "cdn" for s in calls)


def test_private_or_missing_repo_and_revision(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(HubRepoNotFound, match=r"acme/private-llm was not found.*if it is private, set HUGGINGFACE"):
        fetch(hub, tmp_path, PRIVATE)
    with pytest.raises(HubRepoNotFound, match="or the token given has no access"):
        fetch(hub, tmp_path, PRIVATE, token=OUTSIDER)
    assert verify_manifest(fetch(hub, tmp_path, PRIVATE, token=READER)) == []
    with pytest.raises(HubRepoNotFound, match="acme/nope was not found"):
        fetch(hub, tmp_path, "acme/nope")
    with pytest.raises(HubRepoNotFound, match="has no revision 'v9'"):
        download_model(LLM, "v9", tmp_path / "x", kind="llm", token=None, endpoint=hub.endpoint)


def test_a_repo_without_openvino_files_is_refused_before_downloading(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo("acme/pytorch-only", extra={"config.json": b"{}", "model.safetensors": b"\0" * 128})

    with pytest.raises(ModelSetupError, match=r"not an OpenVINO llm model.*aipc-chat convert acme/pytorch-only"):
        fetch(hub, tmp_path, "acme/pytorch-only")
    assert not any(s.path.endswith("config.json") for s in hub.log)


# ------------------------------------------------------------------------------------------------- resume


def test_a_dropped_connection_resumes_with_range(hub: FakeHub, tmp_path: Path, small_chunks: None) -> None:
    size = hub.repos[LLM].files[BIG].size
    hub.cut_once(BIG, after=200_000)

    dest = fetch(hub, tmp_path)

    first, second = hub.downloads(BIG)
    assert first.body_bytes == 200_000 and first.range is None
    kept = 200_000 // SMALL_CHUNK * SMALL_CHUNK  # whole chunks reached the disk before the drop
    assert second.range == f"bytes={kept}-" and second.status == 206
    assert second.body_bytes == size - kept
    assert verify_manifest(dest, full=True) == []


class Interrupted(Exception):
    """Stands for Ctrl-C or a crash in the middle of a download."""


def test_an_interrupted_download_resumes_next_time(hub: FakeHub, tmp_path: Path, small_chunks: None) -> None:
    size = hub.repos[LLM].files[BIG].size
    before_big = sum(f.size for p, f in hub.repos[LLM].files.items() if p < BIG and wanted_file(p, "llm"))

    def stop_midway(done: int, total: int) -> None:
        if done > before_big + 3 * SMALL_CHUNK:
            raise Interrupted

    with pytest.raises(Interrupted):
        fetch(hub, tmp_path, progress=stop_midway)
    dest = repo_dir(tmp_path, LLM, "main")
    (part,) = (dest / PARTIAL_DIR).glob(f"{BIG}.*.part")
    kept = part.stat().st_size
    assert 0 < kept < size
    assert not (dest / MANIFEST_NAME).exists()
    served_before = len(hub.log)

    seen: list[tuple[int, int]] = []
    fetch(hub, tmp_path, progress=lambda done, total: seen.append((done, total)))

    assert [p for p in hub.fetched(served_before) if p < BIG] == []  # finished files are kept, not fetched again
    # The fake hub logs a transfer once its last byte is written, which can come after the client has read it all,
    # and the interrupted transfer may not be logged at all (seen on a fresh clone): wait for the ranged one.
    (big,) = wait_until(lambda: [s for s in hub.downloads(BIG) if s.range], "the ranged transfer logged")
    assert big.range == f"bytes={kept}-" and big.body_bytes == size - kept
    assert seen[0][0] == before_big + kept  # progress starts where the last attempt stopped
    assert verify_manifest(dest, full=True) == []
    assert not (dest / PARTIAL_DIR).exists()


def test_huggingface_hub_alone_starts_over(hub: FakeHub, tmp_path: Path, small_chunks: None) -> None:
    """Why hub.py keeps its own partial files: huggingface_hub 1.21 deletes its .incomplete file on failure."""

    class StopAfterOneChunk:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.n = 0

        def __enter__(self) -> StopAfterOneChunk:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: int) -> None:
            self.n += 1
            if self.n == 3:
                raise Interrupted

    with pytest.raises(Interrupted):
        hf_hub_download(LLM, BIG, local_dir=tmp_path / "hf", endpoint=hub.endpoint, token=False,
                        tqdm_class=StopAfterOneChunk)  # type: ignore[arg-type]
    assert not list((tmp_path / "hf").rglob("*.incomplete"))
    hf_hub_download(LLM, BIG, local_dir=tmp_path / "hf", endpoint=hub.endpoint, token=False)

    # The retry fetched the whole file from byte 0: no request asked for a range. (Whether the interrupted transfer
    # is logged at all is a race: the fake hub logs a transfer once its last byte is written.)
    size = hub.repos[LLM].files[BIG].size
    assert all(s.range is None for s in hub.downloads(BIG))
    assert any(s.body_bytes == size for s in hub.downloads(BIG))


# ----------------------------------------------------------------------------------------- verification


@pytest.mark.parametrize(("path", "what"), [(BIG, "sha256"), ("openvino_tokenizer.xml", "git sha1")])
def test_a_corrupted_file_is_named_deleted_and_refetched_on_rerun(hub: FakeHub, tmp_path: Path, path: str,
                                                                  what: str) -> None:
    hub.corrupt(path, offset=100)

    with pytest.raises(DownloadCorrupted, match=rf"{path} from {LLM}@main is corrupted.*{what}.*deleted.*rerun"):
        fetch(hub, tmp_path)
    dest = repo_dir(tmp_path, LLM, "main")
    assert not (dest / path).exists() and not list(dest.rglob("*.part"))
    assert not (dest / MANIFEST_NAME).exists()

    hub.heal(path)
    served_before = len(hub.log)
    fetch(hub, tmp_path)

    assert hub.fetched(served_before) == [path]
    assert verify_manifest(dest, full=True) == []


def test_verify_manifest_catches_damage_and_download_repairs_it(hub: FakeHub, tmp_path: Path) -> None:
    dest = fetch(hub, tmp_path)
    size = (dest / BIG).stat().st_size
    with (dest / BIG).open("r+b") as fh:
        fh.truncate(size - 10)
    (dest / "tokenizer.json").unlink()

    assert verify_manifest(dest) == [f"{BIG}: {size - 10} bytes, the manifest says {size}", "tokenizer.json: missing"]

    served_before = len(hub.log)
    fetch(hub, tmp_path)
    assert verify_manifest(dest, full=True) == []
    assert hub.fetched(served_before) == [BIG, "tokenizer.json"]

    data = bytearray((dest / "config.json").read_bytes())
    data[0] ^= 1
    (dest / "config.json").write_bytes(bytes(data))
    assert verify_manifest(dest) == []  # sizes only: cheap, at every start
    assert verify_manifest(dest, full=True) == ["config.json: sha256 differs from the manifest (the file is corrupted)"]
    (dest / MANIFEST_NAME).unlink()
    assert verify_manifest(dest) == [f"{MANIFEST_NAME} is missing: the download did not finish (run `aipc-chat "
                                     "download`)"]


# ---------------------------------------------------------------------------------------------- offline


def test_hf_hub_offline_fails_fast_saying_what_to_run(hub: FakeHub, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(HubUnreachable) as caught:
        fetch(hub, tmp_path)

    message = str(caught.value)
    assert "llm model OpenVINO/demo-llm-int4-ov@main is not downloaded" in message
    assert "HF_HUB_OFFLINE=1" in message and "aipc-chat download" in message and "aipc-chat serve --demo" in message
    assert hub.log == []


def test_a_dead_endpoint_fails_fast(tmp_path: Path) -> None:
    said = (r"cannot be reached \(ConnectError.*Without the hub.*aipc-chat serve --demo"  # the ways out first
            r".*Once the hub answers.*aipc-chat download")
    with pytest.raises(HubUnreachable, match=said):
        download_model(LLM, "main", tmp_path / "m", kind="llm", token=None,
                       endpoint=f"http://127.0.0.1:{free_port()}")

    assert not (tmp_path / "m").exists()


def test_offline_keeps_a_verified_copy_but_not_a_damaged_one(hub: FakeHub, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dest = fetch(hub, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert fetch(hub, tmp_path) == dest

    (dest / BIG).unlink()
    with pytest.raises(HubUnreachable, match=rf"is incomplete \({BIG}: missing\)"):
        fetch(hub, tmp_path)


# ------------------------------------------------------------------------------------------------ listing


def test_list_models_reports_hub_converted_and_demo_folders(hub: FakeHub, demo_models: Path,
                                                            tmp_path: Path) -> None:
    fetch(hub, tmp_path)
    sd = fetch(hub, tmp_path, SD, kind="image")
    (sd / "unet" / "openvino_model.xml").write_text("truncated")
    shutil.copytree(demo_models / "llm", tmp_path / "demo" / "llm")
    (tmp_path / "demo" / "image").mkdir()  # a build that never finished
    (tmp_path / "hub" / "acme--empty" / "main").mkdir(parents=True)  # an interrupted first download

    rows = {(r["source"], r["name"]): r for r in list_models(tmp_path)}

    assert set(rows) == {("hub", LLM), ("hub", SD), ("hub", "acme/empty"), ("demo", "llm"), ("demo", "image")}
    llm = rows["hub", LLM]
    assert llm["verified"] and llm["kind"] == "llm" and llm["revision"] == "main"
    assert llm["commit"] == hub.repos[LLM].commit and llm["problems"] == []
    assert llm["size_bytes"] == sum(p.stat().st_size for p in Path(llm["path"]).rglob("*") if p.is_file())
    assert not rows["hub", SD]["verified"] and rows["hub", SD]["kind"] == "image"
    assert rows["hub", SD]["problems"][0].startswith("unet/openvino_model.xml: 9 bytes")
    assert not rows["hub", "acme/empty"]["verified"] and rows["hub", "acme/empty"]["kind"] is None
    assert rows["demo", "llm"]["verified"] and rows["demo", "llm"]["kind"] == "llm"
    assert not rows["demo", "image"]["verified"]
    json.dumps(list(rows.values()))  # plain data, ready for `aipc-chat models --json`


def test_the_fake_hub_answers_huggingface_hubs_listing_calls(hub: FakeHub) -> None:
    api = huggingface_hub.HfApi(endpoint=hub.endpoint, token=False)
    repo = hub.repos[SD]

    info = api.model_info(SD, files_metadata=True)
    top = {getattr(e, "path", None) for e in api.list_repo_tree(SD)}
    deep = {e.path: e for e in api.list_repo_tree(SD, recursive=True) if isinstance(e, huggingface_hub.hf_api.RepoFile)}
    (unet,) = api.get_paths_info(SD, ["unet/openvino_model.bin"])

    assert info.sha == repo.commit and info.siblings is not None and len(info.siblings) == len(repo.files)
    assert {"unet", "model_index.json"} <= top and "unet/openvino_model.bin" not in top
    assert deep["unet/openvino_model.bin"].lfs is not None and deep["model_index.json"].lfs is None
    assert isinstance(unet, huggingface_hub.hf_api.RepoFile) and unet.lfs is not None
    assert unet.lfs.sha256 == repo.files["unet/openvino_model.bin"].sha256
    meta = huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(SD, "unet/openvino_model.bin",
                                                                            endpoint=hub.endpoint))
    assert meta.xet_file_data is None and meta.location.startswith(hub.cdn) and meta.commit_hash == repo.commit
    assert meta.etag == unet.lfs.sha256 and meta.size == unet.size


def test_huggingface_hub_is_the_pinned_version() -> None:
    """The fake hub mirrors what this huggingface_hub sends; a new major version needs a new look."""
    assert huggingface_hub.__version__.startswith("1.")
