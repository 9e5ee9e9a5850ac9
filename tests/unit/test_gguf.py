"""GGUF files and Ollama's store: metadata, what openvino-genai can run, names, manifests, links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aipc_chat.engines.grammar import write_probe_model
from aipc_chat.errors import ModelSetupError
from aipc_chat.provision.gguf import (
    GGUFInfo,
    check_gguf,
    display_name,
    find_ollama_model,
    link_as_gguf,
    list_ollama_models,
    parse_ollama_name,
    read_gguf,
)
from aipc_chat.provision.resolve import check_present, choose_model
from aipc_chat.settings import Settings
from tests.stores import ollama_store


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_probe_model(path)  # a one-layer Llama with F16 and F32 tensors
    return path


def test_metadata_as_config(tiny_gguf: Path) -> None:
    info = read_gguf(tiny_gguf)
    assert info.architecture == "llama" and info.problem() is None
    assert info.config["num_hidden_layers"] == 1 and info.config["num_attention_heads"] == 2
    assert info.config["hidden_size"] == 32 and info.config["max_position_embeddings"] == 512
    assert info.config["vocab_size"] == 259 and info.chat_template is not None
    assert set(info.tensor_types) == {"F16", "F32"} and info.quantization == "F16+F32"
    assert check_gguf(tiny_gguf) == info


def test_what_cannot_be_run_is_refused_with_a_reason(tmp_path: Path) -> None:
    def info(arch: str, *types: str) -> GGUFInfo:
        return GGUFInfo(tmp_path / "m.gguf", arch, None, types, {}, None)

    assert "architecture 'gemma2'" in (info("gemma2", "F16").problem() or "")
    problem = info("qwen2", "Q5_K", "Q6_K", "F32").problem() or ""
    assert "Q5_K" in problem and "Q4_K_M" in problem
    assert info("qwen2", "Q4_K", "Q6_K", "F32").problem() is None
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelSetupError, match="not a GGUF file"):
        read_gguf(tmp_path / "junk.gguf")


@pytest.mark.parametrize(("name", "parts"), [
    ("deepseek-r1:1.5b", ("registry.ollama.ai", "library", "deepseek-r1", "1.5b")),
    ("smollm2", ("registry.ollama.ai", "library", "smollm2", "latest")),
    ("me/model:q4", ("registry.ollama.ai", "me", "model", "q4")),
    ("hf.co/org/model:Q4_K_M", ("hf.co", "org", "model", "Q4_K_M")),
])
def test_ollama_names(name: str, parts: tuple[str, str, str, str]) -> None:
    assert parse_ollama_name(name) == parts
    assert display_name(*parts) == (name if ":" in name else f"{name}:latest")


@pytest.mark.parametrize("bad", ["a/b/c/d", "../x", ":tag", "a//b"])
def test_bad_ollama_names(bad: str) -> None:
    with pytest.raises(ModelSetupError):
        parse_ollama_name(bad)


def test_a_store_laid_out_as_ollamas(tiny_gguf: Path, tmp_path: Path) -> None:
    store = ollama_store(tmp_path, tiny_gguf, tag="1b")
    rows = list_ollama_models(store)
    assert [r["name"] for r in rows] == ["tiny:1b"] and rows[0]["size_bytes"] == tiny_gguf.stat().st_size
    blob = find_ollama_model("tiny:1b", store)
    assert blob == rows[0]["path"] and blob.read_bytes() == tiny_gguf.read_bytes()
    with pytest.raises(ModelSetupError, match=r"no model 'tiny' \(models there: tiny:1b\)"):
        find_ollama_model("tiny", store)
    linked = link_as_gguf(blob, "tiny:1b", tmp_path / "models" / "ollama")
    assert linked.name == "tiny_1b.gguf" and linked.read_bytes() == tiny_gguf.read_bytes()
    assert link_as_gguf(blob, "tiny:1b", tmp_path / "models" / "ollama") == linked  # idempotent


def test_ollama_names_and_gguf_files_as_the_llm(tiny_gguf: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = ollama_store(tmp_path, tiny_gguf, tag="1b")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    choice = choose_model(Settings(llm_path="ollama:tiny:1b", models_dir=tmp_path / "models"), "llm")
    assert (choice.source, choice.name, choice.gguf) == ("ollama", "tiny:1b", True)
    assert choice.path is not None and choice.path.parent == tmp_path / "models" / "ollama"
    check_present(choice)
    direct = choose_model(Settings(llm_path=str(tiny_gguf)), "llm")
    assert (direct.source, direct.name, direct.missing_files()) == ("path", "tiny", [])
    missing = choose_model(Settings(llm_path=str(tmp_path / "nope.gguf")), "llm")
    with pytest.raises(ModelSetupError, match=r"nope.gguf.*a \.gguf file, or ollama:NAME"):
        check_present(missing)
    with pytest.raises(ModelSetupError, match="ollama pull nothing"):
        choose_model(Settings(llm_path="ollama:nothing"), "llm")


def test_the_store_defaults_to_the_home_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from aipc_chat.provision.gguf import ollama_store as store

    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    assert store() == Path(os.path.expanduser("~")) / ".ollama" / "models"


def test_one_parse_per_file_version(tiny_gguf: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    first = read_gguf(copy)
    assert read_gguf(copy) is first  # start-up asks several times; parsing takes seconds on a real file
    os.utime(copy, ns=(1, 1))
    assert read_gguf(copy) is not first and read_gguf(copy) == first  # a changed file is read again
