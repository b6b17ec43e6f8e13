"""Build a backend's model from the loaded torch model, through the export cache.

Blocking (export, compilation); call from a worker thread or the `export` command. Cache entries are
keyed by a hash of the model's files (or, for a model without a local folder, of its weights and
tokenizer), the backend, the quantization, and the versions of every library the export depends on,
so upgrading any of them or changing the model exports afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from importlib import metadata
from pathlib import Path

from .export_cache import file_digest, load_entry
from .exported import ExportedModel, onnx_runner, openvino_runner
from .exporters import ONNX_FILE, export_onnx, export_openvino, quantize_onnx
from .sentence_transformer import SentenceTransformerModel

log = logging.getLogger(__name__)

# Bump when an export's recipe changes in a way the library versions do not show.
EXPORT_FORMAT = 1
# Per (backend, quantize) recipe versions, so a changed recipe re-exports only its own entries.
_RECIPES = {("onnx", "int8"): 2}  # 2: per-channel u8 weights, MatMuls only
EXPORTED_BACKENDS = ("openvino", "onnx")
_LIBRARIES = ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "openvino", "nncf")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def model_fingerprint(model: SentenceTransformerModel) -> str:
    """SHA-256 over the model folder's files (names and contents), or over the loaded weights and the
    tokenizer where the model came from the hub's cache without a folder of its own."""
    digest = hashlib.sha256()
    source = Path(model.source)
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file() and ".git" not in p.parts):
            digest.update(str(path.relative_to(source)).encode())
            digest.update(file_digest(path).encode())
    else:
        import torch

        for name, tensor in model.st_model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).numpy().tobytes())
        digest.update(json.dumps(model.st_model.tokenizer.get_vocab(), sort_keys=True).encode())
    digest.update(str(model.max_tokens).encode())
    return digest.hexdigest()


def entry_name(model: SentenceTransformerModel, fingerprint: str, backend: str, quantize: str) -> str:
    key = json.dumps(
        {
            "format": EXPORT_FORMAT,
            "model": fingerprint,
            "backend": backend,
            "quantize": quantize,
            "recipe": _RECIPES.get((backend, quantize), 1),
            "libraries": library_versions(),
        },
        sort_keys=True,
    )
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", model.name.rsplit("/", 1)[-1]).strip("-")[:48] or "model"
    return f"{slug}-{backend}-{quantize}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class BackendBuilder:
    """Builds the exported models of one loaded torch model, sharing the fp32 ONNX export they start from."""

    def __init__(self, base: SentenceTransformerModel, cache_dir: Path) -> None:
        self.base = base
        self.cache_dir = cache_dir
        self.fingerprint = model_fingerprint(base)

    def _name(self, backend: str, quantize: str) -> str:
        return entry_name(self.base, self.fingerprint, backend, quantize)

    def _what(self, backend: str, quantize: str) -> str:
        return f"{self.base.name} for {backend}" + (" int8" if quantize == "int8" else "")

    def onnx_fp32(self) -> Path:
        """The fp32 ONNX export (built if needed); OpenVINO and int8 exports are made from it."""
        from .export_cache import ensure_entry

        return ensure_entry(
            self.cache_dir,
            self._name("onnx", "none"),
            lambda tmp: export_onnx(self.base, tmp),
            what=self._what("onnx", "none"),
        )

    def build(self, backend: str, quantize: str) -> ExportedModel:
        if backend == "onnx":
            return self._onnx(quantize)
        if backend == "openvino":
            return self._openvino(quantize)
        raise ValueError(f"not an exported backend: {backend}")

    def _onnx(self, quantize: str) -> ExportedModel:
        if quantize == "int8":

            def export(tmp: Path) -> None:
                quantize_onnx(self.onnx_fp32() / ONNX_FILE, tmp)

        else:

            def export(tmp: Path) -> None:
                export_onnx(self.base, tmp)

        def load(path: Path) -> ExportedModel:
            precision = "int8" if quantize == "int8" else "float32"
            return ExportedModel(self.base, onnx_runner(path), backend="onnx", precision=precision)

        return load_entry(
            self.cache_dir, self._name("onnx", quantize), export, load, what=self._what("onnx", quantize)
        )

    def _openvino(self, quantize: str) -> ExportedModel:
        def export(tmp: Path) -> None:
            export_openvino(self.base, self.onnx_fp32() / ONNX_FILE, tmp, int8=quantize == "int8")

        def load(path: Path) -> ExportedModel:
            run, precision = openvino_runner(path)
            precision = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(precision, precision)
            if quantize == "int8":
                precision = f"int8+{precision}"
            return ExportedModel(self.base, run, backend="openvino", precision=precision)

        return load_entry(
            self.cache_dir,
            self._name("openvino", quantize),
            export,
            load,
            what=self._what("openvino", quantize),
        )
