"""Local embeddings: all-MiniLM-L6-v2 on onnxruntime (the product) against the NumPy forward
pass it replaced (kept here as the baseline and the reference of the vectors), same weights,
same tokenizer, same process, alternating rounds.

Figures: texts per second for batches of 32 (as documents.ingest embeds chunks), one thread
each (the CPU pool's processes are the scale); the load time; and how far the vectors are
apart (largest difference of a component, smallest cosine between the two for one text).
Target: throughput >= 1.0x the NumPy pass, vectors within 1e-4.
Usage: uv run python -m bench.embeddings [--texts 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import numpy.typing as npt

from bench.harness import Figures, print_table, print_targets, ratio
from switchyard.services.embeddings import LOCAL_BATCH, LOCAL_PACKAGE, MAX_TOKENS, MiniLM

Array = npt.NDArray[np.float32]


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


class NumpyMiniLM:
    """The NumPy forward pass the product ran before onnxruntime (the reference here)."""

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


def corpus(count: int) -> list[str]:
    """Chunk-like texts of varied length (10 to 200 words)."""
    words = [
        "tenant",
        "document",
        "search",
        "vector",
        "answer",
        "model",
        "chunk",
        "graph",
        "entity",
        "ledger",
        "run",
    ]
    rng = np.random.default_rng(7)
    return [
        " ".join(rng.choice(words, size=int(rng.integers(10, 200))).tolist()) for _ in range(count)
    ]


def throughput(encode: object, texts: Sequence[str]) -> float:
    assert callable(encode)
    started = time.perf_counter()
    for start in range(0, len(texts), LOCAL_BATCH):
        encode(texts[start : start + LOCAL_BATCH])
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spec = importlib.util.find_spec(LOCAL_PACKAGE)
    assert spec is not None
    assert spec.origin is not None
    archive = Path(spec.origin).parent / "model.zip"
    started = time.perf_counter()
    runtime = MiniLM(archive)
    runtime_load = time.perf_counter() - started
    started = time.perf_counter()
    reference = NumpyMiniLM(archive)
    reference_load = time.perf_counter() - started

    texts = corpus(args.texts)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.rounds):
        theirs.append(throughput(reference.encode, texts))
        ours.append(throughput(runtime.encode, texts))
    sample = texts[:LOCAL_BATCH]
    a, b = runtime.encode(sample), reference.encode(sample)
    largest = float(np.abs(a - b).max())
    closest = float((a * b).sum(axis=1).min())

    mine, base = Figures(tuple(ours)), Figures(tuple(theirs))
    print_table(
        f"Local embeddings, {args.texts} texts in batches of {LOCAL_BATCH} (one thread)",
        ["", "texts/s", "vs NumPy", "load s"],
        [
            ["onnxruntime (product)", mine, ratio(mine.median, base.median), f"{runtime_load:.2f}"],
            ["NumPy forward pass (before)", base, "1.00x", f"{reference_load:.2f}"],
        ],
    )
    print_table(
        "Vectors, the same texts through both",
        ["largest component difference", "smallest cosine between the two"],
        [[f"{largest:.2e}", f"{closest:.7f}"]],
    )
    print_targets(
        [
            (
                "throughput >= 1.0x NumPy",
                ratio(mine.median, base.median),
                mine.median >= base.median,
            ),
            ("vectors within 1e-4", f"{largest:.1e}", largest <= 1e-4),
        ]
    )


if __name__ == "__main__":
    main()
