"""Export a loaded sentence-transformers model's transformer to ONNX and OpenVINO IR, fp32 or int8.

Blocking and CPU-heavy (seconds to a minute); run from a worker thread or the `export` command. The
exported graph holds only the transformer (token ids in, token embeddings out): pooling and
normalisation stay with the model's own sentence-transformers modules (see `exported.py`). Nothing is
downloaded: the weights come from the model already in memory, int8 calibration texts from the package.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .probe_texts import probe_texts
from .sentence_transformer import SentenceTransformerModel, pad

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPENVINO_FILE = "model.xml"
OPSET = 17
# NNCF's post-training quantization: calibration texts (from the package) and the share it samples.
CALIBRATION_TEXTS = 160


def input_names(model: SentenceTransformerModel) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if model.wants_token_types else [])


def feeds(model: SentenceTransformerModel, token_ids: list[list[int]]) -> dict[str, np.ndarray]:
    """The exported graph's inputs for a batch of unpadded token ids."""
    input_ids, mask = pad(token_ids, model.pad_id)
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    if model.wants_token_types:
        inputs["token_type_ids"] = np.zeros_like(input_ids)
    return inputs


def _transformer_only(model: SentenceTransformerModel) -> Any:
    import torch

    class TransformerOnly(torch.nn.Module):
        def __init__(self, auto_model: Any) -> None:
            super().__init__()
            self.auto_model = auto_model

        def forward(self, *inputs: Any) -> Any:
            named = dict(zip(input_names(model), inputs, strict=True))
            return self.auto_model(**named, return_dict=True).last_hidden_state

    return TransformerOnly(model.st_model[0].auto_model).eval()


def export_onnx(model: SentenceTransformerModel, directory: Path) -> None:
    """`directory/model.onnx`: the fp32 transformer with dynamic batch and sequence axes."""
    import torch
    from torch.jit._trace import TracerWarning

    wrapper = _transformer_only(model)
    sample = feeds(model, model.tokenize(["an example text to trace", "short"]))
    args = tuple(torch.from_numpy(sample[name]) for name in input_names(model))
    axes = {name: {0: "batch", 1: "sequence"} for name in [*input_names(model), "token_embeddings"]}
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and tracing notes about shape checks that are
        # constant for an encoder: noise in an operator's start-up log.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", TracerWarning)
        torch.onnx.export(
            wrapper,
            args,
            str(directory / ONNX_FILE),
            input_names=input_names(model),
            output_names=["token_embeddings"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, seconds not minutes
        )


def quantize_onnx(source: Path, directory: Path) -> None:
    """`directory/model.onnx`: ONNX Runtime's dynamic int8 quantization of `source` (weights int8,
    activations quantized per call, so no calibration data).

    The MatMuls only (the embedding lookup stays fp32), with per-channel u8 weights: on CPUs without
    VNNI, u8 x s8 kernels saturate their 16-bit intermediate sums, and plain per-tensor s8 weights gave
    a mean cosine to torch of 0.95 on an AVX2 CPU; this recipe 0.993 on the package's probe texts.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(directory / ONNX_FILE),
        weight_type=QuantType.QUInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )


def export_openvino(
    model: SentenceTransformerModel, onnx_source: Path, directory: Path, *, int8: bool
) -> None:
    """`directory/model.xml` (+ .bin) converted from the fp32 ONNX export; with `int8`, quantized by
    NNCF, calibrated on texts that ship with the package."""
    import openvino as ov

    ov_model = ov.convert_model(str(onnx_source))
    if int8:
        ov_model = _nncf_int8(model, ov_model)
    # Keep the weights in fp32: the runtime picks its own inference precision for this CPU.
    ov.save_model(ov_model, str(directory / OPENVINO_FILE), compress_to_fp16=False)


def _nncf_int8(model: SentenceTransformerModel, ov_model: Any) -> Any:
    try:
        import nncf
    except ImportError as error:  # pragma: no cover - nncf is a runtime dependency
        raise RuntimeError("OpenVINO int8 needs the nncf package") from error
    texts = probe_texts(CALIBRATION_TEXTS, seed=4242)
    samples = [feeds(model, [ids]) for ids in model.tokenize(texts)]
    log.info("quantizing to int8 on %d calibration texts", len(samples))
    return nncf.quantize(
        ov_model,
        nncf.Dataset(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(samples),
    )


Exporter = Callable[[Path], None]
