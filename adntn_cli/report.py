"""The compression report as typed data, and one renderer per format.

``LayerRecord``, ``Totals``, ``Scores``, ``Accuracy``, ``CompressionReport`` and ``EvalResult``
own the vocabulary of DESIGN.md §9: report.json, ``plan --json`` and ``eval --json`` are
``to_dict()`` of them, report.md is ``to_markdown``, the plot ``plot``. Records read like the
mappings they serialise to (``record["ratio"]``). No rich here: the CLI draws its tables from the
same records.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .atomic import write_bytes
from .errors import AdntnError

__all__ = [
    "Accuracy",
    "CompressionReport",
    "EvalResult",
    "LayerRecord",
    "Scores",
    "Totals",
    "format_legs",
    "metrics_csv",
    "plot",
    "to_markdown",
]


class _Record(Mapping):
    """A frozen dataclass that serialises to a dict of its set fields and reads like one.

    A field whose value is None is left out of ``to_dict()`` (a file's report has no accuracy),
    except the names in ``nullable``, which are written as null (a run outside git has no commit).
    """

    nullable: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        keep = self._nullable()
        return {k: _plain(v) for k, v in self._items() if v is not None or k in keep}

    def _nullable(self) -> frozenset[str]:
        return self.nullable

    def _items(self) -> Iterator[tuple[str, Any]]:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            yield f.name, getattr(self, f.name)

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, None) if key in self._names() else None
        if value is None and key not in self._nullable():
            raise KeyError(key)
        return _plain(value)

    def __iter__(self) -> Iterator[str]:
        keep = self._nullable()
        return iter(k for k, v in self._items() if v is not None or k in keep)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @classmethod
    def _names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """From the dict ``to_dict`` wrote (unknown keys are dropped: later versions add some)."""
        return cls(**{k: v for k, v in data.items() if k in cls._names()})


def _plain(v: Any) -> Any:
    if isinstance(v, _Record):
        return v.to_dict()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class LayerRecord(_Record):
    """One replaced layer as a plan resolves it (DESIGN.md §9)."""

    layer: str
    kind: str
    structure: str
    shape: list[int]
    legs: list[list[int]]
    bond_dim: list[int]
    dense_params: int
    tn_params: int
    flops: int
    peak_bytes: int
    passes: float
    schedule: str
    ratio: float


@dataclass(frozen=True)
class Totals(_Record):
    """The whole model's and the replaced layers' parameters and ratios."""

    dense_params: int
    compressed_params: int
    ratio: float
    replaced_dense_params: int
    replaced_tn_params: int
    replaced_ratio: float
    layers: int

    @classmethod
    def of(cls, dense_params: int, layers: Sequence[LayerRecord]) -> Totals:
        """The totals of a model of ``dense_params`` parameters with ``layers`` replaced."""
        replaced_dense = sum(r.dense_params for r in layers)
        replaced_tn = sum(r.tn_params for r in layers)
        compressed = dense_params - replaced_dense + replaced_tn
        return cls(
            dense_params=dense_params,
            compressed_params=compressed,
            ratio=dense_params / compressed if compressed else float("inf"),
            replaced_dense_params=replaced_dense,
            replaced_tn_params=replaced_tn,
            replaced_ratio=replaced_dense / replaced_tn if replaced_tn else float("inf"),
            layers=len(layers),
        )


@dataclass(frozen=True)
class Scores(_Record):
    """Top-1 and top-5 as fractions in [0, 1], and the mean cross-entropy."""

    top1: float
    top5: float
    loss: float

    @classmethod
    def of(cls, metrics: Mapping[str, float]) -> Scores:
        return cls(metrics["top1"], metrics["top5"], metrics["loss"])


@dataclass(frozen=True)
class Accuracy(_Record):
    """Dense against compressed on the validation split, and how often they agree."""

    dense: Scores
    compressed: Scores
    agreement: float | None = None
    val_images: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Accuracy:
        return cls(
            Scores.from_dict(data["dense"]),
            Scores.from_dict(data["compressed"]),
            data.get("agreement"),
            data.get("val_images"),
        )


@dataclass(frozen=True)
class CompressionReport(_Record):
    """What a compression did: report.json of a run, or what a compressed file says of itself.

    The field order is report.json's key order.
    """

    nullable: ClassVar[frozenset[str]] = frozenset({"git_commit"})

    layers: list[LayerRecord] = field(default_factory=list)
    totals: Totals | None = None
    recipe: str | None = None
    model: str | None = None
    arch: str | None = None
    adntn_version: str | None = None
    data: str | None = None
    data_description: str | None = None
    seed: int | None = None
    device: str | None = None
    precision: str | None = None
    channels_last: bool | None = None
    processes: int | None = None
    command: list[str] | None = None  # the command that started the run
    resumes: list[dict[str, Any]] | None = None  # each --resume: its command, what it changed
    versions: dict[str, str] | None = None
    git_commit: str | None = None
    accuracy: Accuracy | None = None
    selection: dict[str, Any] | None = None  # where the checkpoint was chosen (None: final)
    layerwise: dict[str, dict[str, float | str]] | None = None
    compiled: dict[str, str] | None = None
    frozen_prefix: dict[str, Any] | None = None
    batchnorm_recalibrated: bool | None = None
    finetune: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    seconds: float | None = None
    run_dir: str | None = field(default=None, compare=False)  # where it was written; not in JSON

    def _nullable(self) -> frozenset[str]:
        """A run's report says it has no git commit; a plan's or a file's says nothing of it."""
        return self.nullable if self.versions is not None else frozenset()

    def _items(self) -> Iterator[tuple[str, Any]]:
        order = (
            "recipe", "model", "arch", "adntn_version", "data", "data_description", "seed",
            "device", "precision", "channels_last", "processes", "command", "resumes", "versions",
            "git_commit", "layers", "totals", "accuracy", "selection", "layerwise", "compiled",
            "frozen_prefix", "batchnorm_recalibrated", "finetune", "files", "seconds",
        )  # fmt: skip
        for name in order:
            yield name, getattr(self, name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionReport:
        known = {k: v for k, v in data.items() if k in cls._names()}
        known["layers"] = [LayerRecord.from_dict(r) for r in data.get("layers", [])]
        if data.get("totals") is not None:
            known["totals"] = Totals.from_dict(data["totals"])
        if data.get("accuracy") is not None:
            known["accuracy"] = Accuracy.from_dict(data["accuracy"])
        return cls(**known)


@dataclass(frozen=True)
class EvalResult(_Record):
    """``adntn eval`` of one model, and beside it the baseline's with the differences."""

    nullable: ClassVar[frozenset[str]] = frozenset({"file_bytes"})

    model: str
    kind: str
    top1: float
    top5: float
    loss: float
    val_images: int
    file_bytes: int | None
    params: int
    runtime_bytes: int
    runtime_bytes_contract: int
    latency_ms: dict[str, float]
    device: str
    input_size: int
    baseline: EvalResult | None = None
    delta: dict[str, float] | None = None

    def against(self, base: EvalResult) -> EvalResult:
        """This result with ``base`` as its baseline and the differences (self - base)."""
        delta = {k: self[k] - base[k] for k in ("top1", "top5", "loss", "params")}
        return dataclasses.replace(self, baseline=base, delta=delta)


def format_legs(legs: Sequence[Sequence[int]], compact: bool = True) -> str:
    """``[[2,2],[2,2],[4,1]]`` -> ``'2x2^2 4x1'`` (runs of equal legs with their count), or
    ``'2x2 2x2 4x1'`` with ``compact=False``."""
    if not compact:
        return " ".join(f"{o}x{i}" for o, i in legs)
    runs: list[list] = []
    for o, i in legs:
        if runs and runs[-1][0] == (o, i):
            runs[-1][1] += 1
        else:
            runs.append([(o, i), 1])
    return " ".join(f"{o}x{i}" + (f"^{n}" if n > 1 else "") for (o, i), n in runs)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def to_markdown(report: CompressionReport) -> str:
    """A human-readable report: what was replaced, by what, at what cost, and the accuracy."""
    t = report.totals
    assert t is not None, "a report has totals"
    lines = [
        f"# adntn compression report: {report.recipe or ''}",
        "",
        f"Model `{report.model or ''}` ({report.arch or ''}), data `{report.data or ''}`, device "
        f"{report.device or ''}, seed {report.seed}.",
        "",
        "| layer | type | structure | legs | bond_dim | dense | generator | x fewer | kept |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in report.layers:
        legs = format_legs(r.legs, compact=False)
        lines.append(
            f"| {r.layer} | {r.kind} | {r.structure} | {legs} | {list(r.bond_dim)} | "
            f"{r.dense_params:,} | {r.tn_params:,} | {r.ratio:,.0f}x | {1 / r.ratio:.2e} |"
        )
    lines += [
        "",
        f"Replaced layers: {t.replaced_dense_params:,} -> {t.replaced_tn_params:,} "
        f"parameters ({t.replaced_ratio:,.0f}x fewer; kept fraction "
        f"{1 / t.replaced_ratio:.2e}).",
        f"Whole model: {t.dense_params:,} -> {t.compressed_params:,} parameters "
        f"({t.ratio:,.2f}x fewer).",
    ]
    acc = report.accuracy
    if acc:
        d, c = acc.dense, acc.compressed
        images = "-" if acc.val_images is None else acc.val_images
        lines += [
            "",
            "| | top-1 | top-5 |",
            "|---|---:|---:|",
            f"| dense | {_pct(d.top1)} | {_pct(d.top5)} |",
            f"| compressed | {_pct(c.top1)} | {_pct(c.top5)} |",
            "",
            f"Validation images: {images}; top-1 agreement with the dense "
            f"model: {_pct(acc.agreement)}.",
        ]
    if acc and report.versions is not None:  # a run's report: say how the model was chosen
        lines += ["", _selection_line(report.selection)]
    fit = report.layerwise
    if fit:
        lines += ["", "Layer-wise fit (output error relative to the dense layer's):", ""]
        lines += [
            f"- {k}: {v['initial']:.3g} -> {v['final']:.3g}"
            + (f" (from the {v['start']} start)" if "start" in v else "")
            for k, v in fit.items()
        ]
    files = report.files
    if files:
        lines += ["", f"File: {files.get('model')} ({files.get('model_bytes', 0):,} bytes)."]
    return "\n".join(lines) + "\n"


def _selection_line(sel: Mapping[str, Any] | None) -> str:
    if not sel:
        return "The final model is reported (no checkpoint was chosen: data.holdout is 0)."
    if sel.get("best_step") is None:
        return "The final model is reported (no end-to-end step chose a checkpoint)."
    return (
        f"Checkpoint chosen on {sel['images']:,} held-out training images (step "
        f"{sel['best_step']}, top-1 {_pct(sel['top1'])}), never on the validation split."
    )


def metrics_csv(history: list[dict[str, Any]]) -> str:
    """One row per training step: step, loss, lr, and the selection split's top-1 and loss
    where measured (the held-out training images the best checkpoint is chosen on)."""
    keys = ["step", "loss", "lr", "select_top1", "select_loss"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    return buf.getvalue()


def plot(report: CompressionReport | Mapping[str, Any], path: str) -> None:
    """A PNG: per-layer compression (log scale) and, where recorded, dense vs compressed top-1
    (from a report, or a dict of report.json's shape)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = report.to_dict() if isinstance(report, CompressionReport) else report
    layers = report["layers"]
    acc = report.get("accuracy")
    fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(11 if acc else 7, 4.2), squeeze=False)
    ax = axes[0][0]
    names = [r["layer"] for r in layers]
    ratios = [r["ratio"] for r in layers]
    colours = {"ttn": "#3b75af", "augttn": "#519e3e", "mera": "#ef8636", "tt": "#8d69b8",
               "lowrank": "#858585"}  # fmt: skip
    bars = ax.bar(names, ratios, color=[colours.get(r["structure"], "#444") for r in layers])
    ax.set_yscale("log")
    ax.set_ylim(1, max(ratios) * 4)  # bars start at 1x: their heights compare honestly
    ax.set_ylabel("x fewer parameters (log scale)")
    ax.set_title("compression per layer (kept fraction = 1 / ratio)")
    for bar, r in zip(bars, layers, strict=True):
        ax.annotate(f"{r['ratio']:,.0f}x\n{r['structure']}", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.tick_params(axis="x", rotation=30)
    if acc:
        ax2 = axes[0][1]
        keys = ["top1", "top5"]
        dense = [100 * acc["dense"][k] for k in keys]
        comp = [100 * acc["compressed"][k] for k in keys]
        xs = range(len(keys))
        ax2.bar([x - 0.2 for x in xs], dense, 0.4, label="dense", color="#999999")
        ax2.bar([x + 0.2 for x in xs], comp, 0.4, label="compressed", color="#3b75af")
        for x, (d, c) in enumerate(zip(dense, comp, strict=True)):
            ax2.annotate(f"{d:.2f}", (x - 0.2, d), ha="center", va="bottom", fontsize=8)
            ax2.annotate(f"{c:.2f}", (x + 0.2, c), ha="center", va="bottom", fontsize=8)
        ax2.set_xticks(list(xs), ["top-1", "top-5"])
        ax2.set_ylim(max(0, min(dense + comp) - 10), 100.5)
        ax2.set_ylabel("accuracy on the validation split (%)")
        ax2.set_title(f"accuracy ({acc.get('val_images', '?')} images)")
        ax2.legend(loc="lower right")
    t = report["totals"]
    fig.suptitle(
        f"{report.get('arch', '')}: replaced layers {t['replaced_ratio']:,.0f}x fewer "
        f"parameters, whole model {t['ratio']:,.1f}x"
    )
    fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        valid = ", ".join(sorted(fig.canvas.get_supported_filetypes()))
        raise AdntnError(f"--plot {path}: cannot draw a .{fmt} file; valid suffixes: {valid}")
    buf = io.BytesIO()  # drawn in memory, then written atomically
    fig.savefig(buf, format=fmt, dpi=120)
    plt.close(fig)
    write_bytes(path, buf.getbuffer())
