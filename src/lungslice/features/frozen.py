"""A model bundle's feature extractor as one TorchScript file: ``predict`` without timm.

Building a backbone with timm imports torchvision, and torchvision imports
``torch._dynamo`` (sympy, triton): about 6 s of a fresh ``lungslice predict``
on this machine kind, longer than the backbone's work on a 300-slice study
(docs/performance.md). So when a bundle is saved, the backbone exactly as
:class:`~lungslice.features.runtime.FeatureRunner` runs it (batch norms folded,
the stem in FP32 under bfloat16 autocast, the precision's casts recorded in the
graph) is traced once with :func:`torch.jit.trace_module` and written next to
the head (:data:`FILE`); the bundle's ``model.json`` holds its record
(:func:`write_frozen_backbone`), with the file's SHA-256 among its ``files``.

At predict time :func:`load_frozen_backbone` reads it with torch alone into a
:class:`FrozenBackbone`, which offers what inference uses of a
:class:`~lungslice.features.backbones.Backbone` (``forward``,
``feature_maps``, ``feature_dim``, ``data_config``, ``weights_id``...).
Bundles without the file fall back to building the backbone with timm
(:func:`lungslice.features.extract.bundle_runner`, with a log line).

The traced graph runs with TorchScript's optimising executor off
(:func:`torch.jit.optimized_execution`), so it computes the same operations
as the eager model: :func:`write_frozen_backbone` refuses a trace whose
features differ from the runner's by more than ``rtol`` on a probe batch.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lungslice.errors import BundleMismatchError, FeatureError
from lungslice.features.weights import WeightsSource
from lungslice.provenance import file_sha256

if TYPE_CHECKING:
    from lungslice.features.runtime import FeatureRunner

__all__ = [
    "FILE",
    "FORMAT",
    "FrozenBackbone",
    "check_frozen_record",
    "load_frozen_backbone",
    "write_frozen_backbone",
]

log = logging.getLogger(__name__)

#: The artefact's file name inside a bundle.
FILE = "backbone.torchscript.pt"
#: ``format`` of its record in ``model.json`` (``"frozen_backbone"``).
FORMAT = "lungslice-frozen-backbone"
FORMAT_VERSION = 1

#: Probe batch the trace is made and checked on: small, and not the sizes used later,
#: so a graph that baked in a shape would fail the check at another size.
_TRACE_SHAPE = (2, 3, 48, 48)
_CHECK_SHAPES = ((3, 3, 64, 64),)


@contextlib.contextmanager
def _no_jit_warnings() -> Iterator[None]:
    """Silence ``torch.jit``'s deprecation notices (torch >= 2.10 warns on every use)."""
    with warnings.catch_warnings():
        for text in (r".*torch\.jit.*deprecated.*", r".*deprecated.*torch\.export.*"):
            warnings.filterwarnings("ignore", message=text)
        yield


class FrozenBackbone(nn.Module):
    """A traced feature extractor loaded from a bundle, used like a :class:`Backbone`.

    Its precision is part of the graph (the bfloat16 casts of a ``"bf16"``
    runner were recorded while tracing), so :class:`FeatureRunner` runs it
    without autocast.

    Attributes
    ----------
    name, layers, layer_widths, feature_dim, data_config, weights_id
        As on :class:`~lungslice.features.backbones.Backbone`, from the record.
    weights_source : WeightsSource
        ``kind`` ``"bundle"``, ``path`` the artefact, ``sha256`` the backbone
        weights' checksum the artefact was made from.
    precision : str
        The precision recorded in the graph (``"fp32"`` or ``"bf16"``).
    folded : int
        Batch norms folded into convolutions before tracing.
    path : pathlib.Path
        The artefact file.
    """

    def __init__(self, module: torch.jit.ScriptModule, record: Mapping[str, Any], path: Path):
        super().__init__()
        self.module = module
        self.path = path
        self.name = str(record["backbone"])
        self.layers = tuple(str(x) for x in record["layers"])
        self.layer_widths = tuple(int(x) for x in record["layer_widths"])
        self.feature_dim = int(record["feature_dim"])
        self.data_config: dict[str, Any] = _data_config(record["data_config"])
        self.weights_id = str(record["weights_id"])
        self.weights_source = WeightsSource("bundle", path, self.weights_id)
        self.precision = str(record["precision"])
        self.folded = int(record.get("folded_norms", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, H, W)`` normalised images -> ``(n, feature_dim)`` features."""
        with torch.jit.optimized_execution(False):
            out: torch.Tensor = self.module(x)
        return out

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last chosen layer's spatial map ``(n, C, h, w)`` (for activation maps)."""
        with torch.jit.optimized_execution(False):
            out: torch.Tensor = self.module.feature_maps(x)
        return out


def _data_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    # JSON turned timm's tuples into lists; give them back as tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def _trace(runner: FeatureRunner, x: torch.Tensor) -> torch.jit.ScriptModule:
    bf16 = runner.precision == "bf16"
    with (
        _no_jit_warnings(),
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
    ):
        traced: torch.jit.ScriptModule = torch.jit.trace_module(
            runner.backbone, {"forward": x, "feature_maps": x}, check_trace=False
        )
    return traced


def write_frozen_backbone(
    directory: str | Path, runner: FeatureRunner, *, rtol: float = 1e-5
) -> dict[str, Any]:
    """Trace ``runner``'s backbone into ``directory/FILE``; return the record for ``model.json``.

    Parameters
    ----------
    directory : path
        The bundle directory (exists).
    runner : FeatureRunner
        A CPU runner made from the bundle's :class:`FeatureConfig` (not compiled).
    rtol : float
        Largest relative difference (to the largest feature) between the traced
        graph's and the runner's features on probe batches.

    Returns
    -------
    dict
        ``format``, ``format_version``, ``file``, ``sha256``, ``backbone``,
        ``layers``, ``layer_widths``, ``feature_dim``, ``weights_id``,
        ``precision``, ``data_config``, ``folded_norms``, ``torch``.

    Raises
    ------
    FeatureError
        If the runner is not on the CPU or compiled, or the traced graph's
        features differ from the runner's (nothing is left in ``directory``).
    """
    from lungslice.features.backbones import Backbone
    from lungslice.features.cache import atomic_write

    backbone = runner.backbone
    if runner.device.type != "cpu" or runner.compiled or not isinstance(backbone, Backbone):
        raise FeatureError(
            f"write_frozen_backbone: expected an uncompiled CPU runner of a timm backbone, got "
            f"{runner.layout} ({type(backbone).__name__}). Fix: make_runner(replace(config, "
            "device='cpu', compile=False))"
        )
    gen = torch.Generator().manual_seed(0)
    probe = torch.rand(_TRACE_SHAPE, generator=gen).contiguous(memory_format=torch.channels_last)
    traced = _trace(runner, probe)
    frozen = FrozenBackbone(traced, _record(runner, "", "", 0), Path(FILE))
    for shape in (_TRACE_SHAPE, *_CHECK_SHAPES):
        x = torch.rand(shape, generator=gen).contiguous(memory_format=torch.channels_last)
        want = torch.from_numpy(runner(x))
        with torch.inference_mode():
            got = frozen(x).float()
        error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
        if not error <= rtol:
            raise FeatureError(
                f"write_frozen_backbone: the traced {backbone.name} differs from the runner by "
                f"{error:.2g} (relative, {tuple(shape)}; expected <= {rtol:g}); not written. "
                "Fix: report it; predict builds the backbone with timm meanwhile."
            )
    path = Path(directory) / FILE

    def save(tmp: Path) -> None:
        with _no_jit_warnings():
            torch.jit.save(traced, str(tmp))

    atomic_write(path, save)
    record = _record(runner, FILE, file_sha256(path), int(runner.folded))
    log.info("froze %s (%s) into %s", backbone.name, runner.precision, path)
    return record


def _record(runner: FeatureRunner, file: str, sha256: str, folded: int) -> dict[str, Any]:
    b = runner.backbone
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "file": file,
        "sha256": sha256,
        "backbone": b.name,
        "layers": list(b.layers),
        "layer_widths": [int(w) for w in b.layer_widths],
        "feature_dim": int(b.feature_dim),
        "weights_id": b.weights_id,
        "precision": runner.precision,
        "data_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in b.data_config.items()
        },
        "folded_norms": folded,
        "torch": torch.__version__,
    }


def check_frozen_record(
    record: Mapping[str, Any],
    where: Path,
    *,
    backbone: str,
    layers: tuple[str, ...],
    precision: str,
) -> None:
    """Refuse a record that is not this format or not of the bundle's feature settings.

    Raises
    ------
    BundleMismatchError
        Naming the record's and the expected value.
    """
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise BundleMismatchError(
            f"{where}: 'frozen_backbone' is format {record.get('format')!r} version "
            f"{record.get('format_version')!r}, expected {FORMAT!r} version {FORMAT_VERSION}. "
            "Fix: retrain the bundle with this lungslice."
        )
    want = {"backbone": backbone, "layers": list(layers), "precision": precision}
    for key, value in want.items():
        if record.get(key) != value:
            raise BundleMismatchError(
                f"{where}: the frozen feature extractor's {key} is {record.get(key)!r} but the "
                f"bundle's features use {value!r}. Fix: copy the bundle again, or retrain it."
            )


def load_frozen_backbone(directory: str | Path, record: Mapping[str, Any]) -> FrozenBackbone:
    """Load a bundle's traced feature extractor (torch only: no timm, no torchvision).

    Parameters
    ----------
    directory : path
        The bundle directory.
    record : mapping
        Its ``model.json`` ``"frozen_backbone"`` record.

    Raises
    ------
    BundleMismatchError
        If the file is missing or its SHA-256 differs from the record's.
    FeatureError
        If this torch cannot read the file (caught by the caller, which
        builds the backbone with timm instead).
    """
    path = Path(directory) / str(record["file"])
    if not path.is_file():
        raise BundleMismatchError(
            f"model bundle {directory} lacks {path.name}, its frozen feature extractor "
            "(model.json 'frozen_backbone'). Fix: copy the whole bundle directory."
        )
    got = file_sha256(path)
    if got != record["sha256"]:
        raise BundleMismatchError(
            f"{path}: SHA-256 is {got}, model.json records {record['sha256']}; the file was "
            "changed or corrupted. Fix: copy the bundle again or retrain."
        )
    try:
        with _no_jit_warnings():
            module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, AttributeError) as err:
        raise FeatureError(f"{path}: torch {torch.__version__} cannot load it ({err})") from err
    return FrozenBackbone(module.eval(), record, path)
