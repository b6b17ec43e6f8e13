"""Backend rows (issue 11): each fast backend's in-process ceilings and the server on it, against torch.

Same corpus, same run as the torch rows of `model_part`, whose in-process torch ceilings are the
reference of the targets: the default backend (`auto`) at 32 clients >= 3.0x torch's sorted-batch rate
and >= 0.90 of its own, at 1 client >= 2.0x torch one-at-a-time; `--quantize int8` 3.5x and 2.5x.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from functools import partial
from operator import itemgetter

from bench import inprocess, server
from bench.parts import (
    Settings,
    _ceilings,
    _check_noise,
    _check_stopped,
    _closed_loop,
    _least_disturbed,
    _ports,
)
from bench.report import Row, Section


@dataclass(frozen=True)
class Variant:
    backend: str
    quantize: str
    batch_vs_torch: float | None = None  # 32 clients / torch sorted batches
    single_vs_torch: float | None = None  # 1 client / torch one at a time
    batch_vs_own: float | None = None  # 32 clients / this backend's sorted batches

    @property
    def flags(self) -> str:
        return f"--backend {self.backend}" + (
            f" --quantize {self.quantize}" if self.quantize != "none" else ""
        )


CPU_VARIANTS = (
    Variant("auto", "none", 3.0, 2.0, 0.90),
    Variant("openvino", "none"),
    Variant("onnx", "none"),
    Variant("auto", "int8", 3.5, 2.5),
)
GPU_VARIANTS = (Variant("auto", "none"),)  # torch in float16


def _gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def backends_part(texts: list[str], settings: Settings, torch_section: Section) -> Section:
    rates = {row.name.split(" (")[0]: row.rate for row in torch_section.rows if row.role == "ceiling"}
    torch_single = rates.get("in-process one-at-a-time", 0.0)
    torch_batch = rates.get(f"in-process sorted batches of {inprocess.BATCH_SIZE}", 0.0)
    sec = Section("Backends: in-process ceilings and trio-infer, ratios to in-process torch fp32", "texts/s")
    for variant in GPU_VARIANTS if _gpu() else CPU_VARIANTS:
        print(f"backend {variant.flags}: in-process ceilings ...", flush=True)
        try:
            encoder = inprocess.BackendEncoder(variant.backend, variant.quantize)
        except Exception as exc:  # an unavailable backend is reported, the others still run
            sec.problems.append(f"{variant.flags}: {exc}")
            continue
        label = f"{variant.flags} ({encoder.backend}, {encoder.precision})"
        inprocess.warm_up(encoder, texts)
        single, batched = _ceilings(encoder, texts, settings)
        del encoder
        gc.collect()
        for ceiling in (single, batched):
            _check_noise(sec, f"{label} {ceiling.name}", ceiling.span)
        sec.rows += [
            Row(
                f"{label} {single.name}",
                single.rate,
                single.quantile(0.5),
                single.quantile(0.99),
                role="ceiling",
            ),
            Row(
                f"{label} {batched.name}",
                batched.rate,
                batched.quantile(0.5),
                batched.quantile(0.99),
                role="ceiling",
            ),
        ]
        port, _ = _ports(settings)
        args = [
            "-m",
            "trio_infer",
            "--port",
            str(port),
            *server.NO_CACHE,
            "--backend",
            variant.backend,
            "--quantize",
            variant.quantize,
        ]
        try:
            with server.running(
                f"trio-infer-{variant.backend}-{variant.quantize}",
                args,
                port,
                {"MODEL_NAME": None},
                settings.ready_timeout,
            ) as s:
                served = [
                    _least_disturbed(
                        f"{label} {n} client(s)",
                        settings,
                        partial(_closed_loop, s, texts, n, settings),
                        itemgetter(2),
                    )
                    for n in settings.clients
                ]
            _check_stopped(sec, s)
        except server.ServerError as exc:
            sec.problems.append(f"{label}: {exc}")
            continue
        (one, one_note, one_span), (many, many_note, many_span) = served
        for row, note, span in ((one, one_note, one_span), (many, many_note, many_span)):
            _check_noise(sec, row.name, span)
            sec.notes.append(f"{label}: {note}")
        one.name, many.name = f"{label} {one.name}", f"{label} {many.name}"
        one.ratio = one.rate / torch_single if torch_single else None
        one.ratio_of, one.target = "torch one-at-a-time", variant.single_vs_torch
        many.ratio = many.rate / torch_batch if torch_batch else None
        many.ratio_of, many.target = "torch sorted batches", variant.batch_vs_torch
        sec.rows += [one, many]
        if variant.batch_vs_own is not None:
            own = Row(
                f"{many.name} (vs its own ceiling)",
                many.rate,
                many.p50,
                many.p99,
                many.errors,
                ratio=many.rate / batched.rate if batched.rate else None,
                target=variant.batch_vs_own,
                ratio_of="own sorted batches",
                error_detail=many.error_detail,
            )
            sec.rows.append(own)
    return sec
