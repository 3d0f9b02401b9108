"""The commands of the software stages (package ``shiftpq``): metrics, export, golden, report, data.
``train`` and ``sweep`` live in ``shiftpq.cmdline`` and ``shiftpq.sweep`` (the bare training entry
``python -m shiftpq.sweep`` needs them without this package)."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from shiftpq.cmdline import Result, progress
from shiftpq.errors import ShiftPQError


# -- shiftpq metrics ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Metrics(Result):
    """Size (eq. 5) and BOPs (eq. 6) per layer and in total (``metrics.model_metrics``)."""
    metrics: dict

    def lines(self) -> list[str]:
        from shiftpq.metrics import format_table
        return [format_table(self.metrics)]

    def json_text(self) -> str:
        return json.dumps(self.metrics, indent=2)


def cmd_metrics(a) -> Metrics:
    from shiftpq.metrics import model_metrics
    if a.checkpoint:
        from shiftpq.checkpoint import load_model
        model, _ = load_model(a.checkpoint)
        return Metrics(model_metrics(model, quantized=model.quantized))
    from shiftpq.models import build_model
    return Metrics(model_metrics(build_model(a.model), quantized=False))


# -- shiftpq export -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Exported(Result):
    """The layer tables written: where, which model, how many integer ops and arrays."""
    out: Path
    model: str
    ops: int
    arrays: int

    def lines(self) -> list[str]:
        return [f"wrote {self.out}: {self.model}, {self.ops} integer ops, {self.arrays} arrays"]


def cmd_export(a) -> Exported:
    from shiftpq.atomic import prepare_output
    from shiftpq.export import export_checkpoint
    from shiftpq.tables import save_tables
    prepare_output(a.out, a.force)  # before the work
    tables = export_checkpoint(a.checkpoint)
    out = save_tables(tables, a.out, force=a.force)
    return Exported(Path(out), tables.model, len(tables.ops), len(tables.arrays()))


# -- shiftpq pack -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Packed(Result):
    """``shiftpq pack``: a quantized checkpoint in deployment form (shiftpq.checkpoint)."""
    out: Path
    bytes_in: int
    bytes_out: int

    def lines(self) -> list[str]:
        return [f"wrote {self.out}: {self.bytes_out:,} bytes ({self.bytes_in:,} before; the same exported tables)"]


def cmd_pack(a) -> Packed:
    import tempfile

    import torch
    from shiftpq.checkpoint import load_model, save_checkpoint
    from shiftpq.export import check_parameters, sha256_file
    out = Path(a.out)
    if out.exists() and not a.force:
        raise ShiftPQError(f"{out}: exists; pass --force to replace it")
    if out.is_dir():
        raise ShiftPQError(f"{out}: is a directory, expected a checkpoint file")
    model, meta = load_model(a.checkpoint)
    if not model.quantized:
        raise ShiftPQError(f"{a.checkpoint}: field 'meta.quantized' is false: a full-precision model has no level "
                           "indices to pack")
    check_parameters(model, str(a.checkpoint))  # what export refuses (NaN, a bad mask, ...) is not packed
    size_in = Path(a.checkpoint).stat().st_size
    meta = {**meta, "packed_from": meta.get("packed_from") or sha256_file(a.checkpoint)}
    for key in ("spec", "quantized"):  # save_checkpoint writes them from the model
        meta.pop(key, None)
    with tempfile.TemporaryDirectory() as tmp:  # packed and read back before anything is written at OUT
        save_checkpoint(Path(tmp) / "packed.pt", model, meta, compact=True)
        back, _ = load_model(Path(tmp) / "packed.pt")
        for (name, was), (_, now) in zip(model.weight_layers().items(), back.weight_layers().items()):
            if not all(torch.equal(u, v) for u, v in zip(was.weight_codes(), now.weight_codes())):
                raise AssertionError(f"{a.checkpoint}: the packed weight codes of {name} differ (a bug)")
    save_checkpoint(out, model, meta, compact=True)  # the same bytes (deterministic), atomically
    return Packed(out, size_in, out.stat().st_size)


# -- shiftpq golden -----------------------------------------------------------------------------

@dataclass(frozen=True)
class GoldenRun(Result):
    """The golden model's accuracy on the test images and its top-1 agreement with the fake-quant
    model (``golden.evaluate_tables``; agreement None without the comparison); exit 1 when the
    agreement is below ``min_agreement``."""
    report: dict
    min_agreement: float | None = None

    @property
    def agreement(self) -> float | None:
        return self.report["agreement"]

    def lines(self) -> list[str]:
        r = self.report
        out = [f"golden model ({r['model']}): {r['accuracy']:.2f}% on {r['images']} test images "
               f"({r['golden_seconds']:.1f} s)"]
        if r["agreement"] is not None:
            out.append(f"fake-quant model: {r['fakequant_accuracy']:.2f}%; top-1 agreement {r['agreement']:.2f}%, "
                       f"accuracy difference {r['accuracy_difference']:+.2f} points")
        return out

    def json_text(self) -> str:
        return json.dumps(self.report, indent=2, sort_keys=True)

    def problems(self) -> list[str]:
        if not self.passed:
            return [f"shiftpq golden: FAILED: top-1 agreement {self.agreement:.2f}% on {self.report['images']} images "
                    f"is below --min-agreement {self.min_agreement:g}%"]
        return []

    @property
    def passed(self) -> bool:
        return self.min_agreement is None or self.agreement >= self.min_agreement


def cmd_golden(a) -> GoldenRun:
    from shiftpq.data import load_split
    from shiftpq.golden import evaluate_tables
    from shiftpq.tables import load_tables
    if a.min_agreement is not None and a.no_compare:
        raise ShiftPQError("--min-agreement needs the fake-quant comparison: drop --no-compare")
    tables = load_tables(a.tables)
    images, labels = load_split(a.data_dir, "test", a.limit)
    r = evaluate_tables(tables, images.numpy(), labels.numpy(), a.checkpoint, compare=not a.no_compare,
                        progress=not a.no_progress and sys.stderr.isatty())
    return GoldenRun(r, a.min_agreement)


# -- shiftpq report -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Reported(Result):
    """The report written: its HTML page (with the plots beside it) and its Markdown."""
    html: Path
    markdown: Path

    def lines(self) -> list[str]:
        return [f"wrote {self.html} and {self.markdown}"]


def cmd_report(a) -> Reported:
    from shiftpq.report import build_report
    out = Path(build_report(a.build, a.images, a.data_dir, log=progress("report")))
    return Reported(out / "index.html", out / "report.md")


# -- shiftpq data download ----------------------------------------------------------------------

@dataclass(frozen=True)
class Downloaded(Result):
    """The directory holding the CIFAR-10 .bin files."""
    out: Path

    def lines(self) -> list[str]:
        return [f"CIFAR-10 ready in {self.out}"]


def cmd_data(a) -> Downloaded:
    from shiftpq.data import download
    return Downloaded(Path(download(a.out, a.url, a.md5, progress=sys.stderr.isatty())))
