"""A trained model out of Python's training loop: a `torch.export` program (.pt2) or ONNX.

    from lnlatten_fast.training.export import export_checkpoint, export_model
    export_checkpoint("runs/rafdb-paper", "onnx", "lnl.onnx")       # a run directory: its best.pt
    export_model(model, "pt2", "lnl.pt2", dynamic_batch=True)        # a model already loaded

Both take one input, `image`: float32 (B, 3, S, S), RGB scaled as the training pipeline does
(`(pixel / 255 - 0.5) / 0.5`, `data.pipeline.to_model_input`), and give three outputs:
`logits` (B, C), `w_g` (B, M, the non-local weights) and `w_l` (B, M, the local weights).

- pt2: `torch.export` of the model on the backend it runs on (`auto` resolved for its device).
  The fused ops stay `lnlatten_fast::` custom ops, traced through their fakes, so loading the
  program needs them registered: `import lnlatten_fast` before `torch.export.load`. The class
  names ride along as the extra file `class_names.json`.
- onnx: the `reference` backend (plain torch ops, which ONNX has), opset :data:`ONNX_OPSET`,
  always a dynamic batch axis. The class names and the input side are metadata properties
  (`class_names` as JSON, `image_size`). Needs the `export` extra (onnx, onnxscript; onnxruntime
  runs the file).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from copy import deepcopy
from pathlib import Path

import torch

from .. import jsonio
from ..errors import MissingPathError, ParameterError
from ..model import LNLAttenNet
from ..ops.dispatch import resolve_name
from .distributed import pick_device
from .inference import checkpoint_file, load_model

__all__ = ["FORMATS", "SUFFIXES", "ONNX_OPSET", "INPUT_NAME", "OUTPUT_NAMES", "CLASS_NAMES_FILE",
           "ExportExtraMissingError", "ExportedOutputs", "check_destination", "require_extra", "export_pt2",
           "export_onnx", "export_model", "export_checkpoint"]

FORMATS = ("onnx", "pt2")
#: The file name ending each format's file must have.
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2"}
ONNX_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "w_g", "w_l")
#: The extra file of a .pt2 that holds the class names, a JSON list (torch.export.load's extra_files).
CLASS_NAMES_FILE = "class_names.json"
#: The modules `torch.onnx.export` (the torch.export-based exporter) needs, from the `export` extra.
_ONNX_MODULES = ("onnx", "onnxscript")


class ExportExtraMissingError(ParameterError, ImportError):
    """`format` needs the `export` extra, which is not installed (`missing` names the module)."""

    def __init__(self, format: str, missing: str):
        super().__init__("format", f"{format} needs the export extra: pip install 'lnlatten_fast[export]' "
                                   f"({missing} is not installed)")
        self.missing = missing


def require_extra(format: str) -> None:
    """ExportExtraMissingError when `format` needs a module that cannot be imported."""
    if format != "onnx":
        return
    for name in _ONNX_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ExportExtraMissingError(format, name) from None


def check_destination(format: str, out) -> Path:
    """`out` as a Path, after checking that `format` is known, `out` ends in its suffix and its
    folder exists (ParameterError / MissingPathError naming `format` or `out`)."""
    if format not in FORMATS:
        raise ParameterError("format", f"must be one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(out)
    if out.suffix.lower() != SUFFIXES[format]:
        raise ParameterError("out", f"{out}: expected a file name ending in {SUFFIXES[format]} for format {format}")
    if out.is_dir():
        raise ParameterError("out", f"{out} is a directory; expected a file name ending in {SUFFIXES[format]}")
    if not out.parent.is_dir():
        raise MissingPathError("out", f"{out}: its folder {out.parent} does not exist")
    return out


class ExportedOutputs(torch.nn.Module):
    """The model with the exported signature: image -> (logits, w_g, w_l), a plain tuple
    (exporters take tensors and tuples of them, not LNLOutput's optional `features`)."""

    def __init__(self, model: LNLAttenNet):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(image)
        return out.logits, out.nonlocal_weights, out.local_weights


def _example_input(model: LNLAttenNet, batch: int) -> torch.Tensor:
    cfg = model.config
    parameter = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=generator)
    return x.to(device=parameter.device, dtype=parameter.dtype)


def _batch_axis():
    # min=1: a dynamic size's example must not be 0 or 1 (torch.export specializes those), but
    # the program itself serves one image as well as many.
    return {INPUT_NAME: {0: torch.export.Dim("batch", min=1)}}


def _for_export(model: LNLAttenNet, backend: str) -> ExportedOutputs:
    """A copy of `model` in eval mode on `backend`, its weights in the default memory layout
    (the caller's model is left as it is). torch.export.save stores a channels-last weight as a
    slice of a storage it has to reconstruct, and warns that this may fail off the CPU."""
    if not isinstance(model, LNLAttenNet):
        raise ParameterError("model", f"must be an LNLAttenNet, got {type(model).__name__}")
    copy = deepcopy(model).set_backend(backend).eval()
    for parameter in copy.parameters():
        parameter.data = parameter.data.contiguous()
    return ExportedOutputs(copy).eval()


@contextlib.contextmanager
def _quiet_exporters():
    """Without the exporters' notes about themselves, which a user can do nothing about:
    torch.onnx logs the torchvision ops it skips, and torch's pytree warns (FutureWarning)
    about its own internal deprecations."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_pt2(model: LNLAttenNet, out, dynamic_batch: bool = False, class_names=None) -> Path:
    """Write `model` as a torch.export program to `out` (.pt2), on the backend it runs on, for
    batches of one image (`dynamic_batch`: of any size). `class_names` go in as the extra file
    CLASS_NAMES_FILE. Loading it needs `import lnlatten_fast` first (its custom ops)."""
    out = check_destination("pt2", out)
    device = next(model.parameters()).device
    # `auto` resolved here: the program records which ops ran, and `auto`'s per-shape conv
    # lookup reads the batch size as an int, which would pin a dynamic batch to the example's.
    backend = resolve_name(model.config.backend, device)
    with _quiet_exporters():
        program = torch.export.export(
            _for_export(model, backend), (_example_input(model, 2 if dynamic_batch else 1),),
            dynamic_shapes=_batch_axis() if dynamic_batch else None,
        )
    extra = {CLASS_NAMES_FILE: jsonio.dumps(list(class_names))} if class_names is not None else None
    torch.export.save(program, out, extra_files=extra)
    return out


def _adaptive_windows(size_in: int, size_out: int) -> list[tuple[int, int]]:
    """ATen's adaptive pooling windows: cell i spans [floor(i·in/out), ceil((i+1)·in/out))."""
    return [(i * size_in // size_out, -(-(i + 1) * size_in // size_out)) for i in range(size_out)]


_ADAPTIVE_MAX_POOL = torch.ops.aten.adaptive_max_pool2d.default


def _adaptive_max_pool2d(x: torch.Tensor, output_size) -> tuple[torch.Tensor, torch.Tensor]:
    """aten.adaptive_max_pool2d as one max per output cell over its window, for the spatial
    sizes the program fixes: torch's own decomposition covers only sizes that divide evenly, ONNX
    has no such op, and pool_to_grid asks for uneven ones (a 2 x 2 F5 onto a 4 x 4 grid, say).
    The indices are the flat positions in the (H, W) plane where each maximum is first found."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    sizes = (output_size,) * 2 if isinstance(output_size, int) else tuple(output_size)
    shape = tuple(given if given is not None else full for given, full in zip(sizes, (height, width)))
    values, indices = [], []
    for r0, r1 in _adaptive_windows(height, shape[0]):
        for c0, c1 in _adaptive_windows(width, shape[1]):
            best, where = x[..., r0:r1, c0:c1].flatten(-2).max(dim=-1)
            values.append(best)
            indices.append((r0 + where // (c1 - c0)) * width + c0 + where % (c1 - c0))
    return torch.stack(values, -1).unflatten(-1, shape), torch.stack(indices, -1).unflatten(-1, shape)


def export_onnx(model: LNLAttenNet, out, class_names=None) -> Path:
    """Write `model` as ONNX to `out` (.onnx): the reference backend, opset ONNX_OPSET, a
    dynamic batch axis, input INPUT_NAME and outputs OUTPUT_NAMES; `class_names` (JSON) and
    `image_size` as metadata properties. ExportExtraMissingError without the `export` extra."""
    out = check_destination("onnx", out)
    require_extra("onnx")
    # The torch.export-based exporter (dynamo=True), not the TorchScript one: the TorchScript
    # exporter is deprecated, and it cannot export the adaptive average pool of a patch map
    # once the batch axis is dynamic ("input size not accessible"). This one works offline
    # from the program torch.export traces, with onnxscript's op library.
    with _quiet_exporters():
        program = torch.export.export(_for_export(model, "reference"), (_example_input(model, 2),),
                                      dynamic_shapes=_batch_axis())
        # Rewritten only where present: the pass retraces the whole program.
        if any(node.target is _ADAPTIVE_MAX_POOL for node in program.graph.nodes):
            program = program.run_decompositions({_ADAPTIVE_MAX_POOL: _adaptive_max_pool2d})
        onnx_program = torch.onnx.export(
            program, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), opset_version=ONNX_OPSET,
            dynamo=True, verbose=False,
        )
    metadata = {"image_size": str(model.config.image_size)}
    if class_names is not None:
        metadata["class_names"] = jsonio.dumps(list(class_names))
    onnx_program.model.metadata_props.update(metadata)
    # One file unless the weights pass protobuf's 2 GB limit (then they go to a .data file
    # beside it).
    onnx_program.save(out, external_data=False)
    return out


def export_model(model: LNLAttenNet, format: str, out, dynamic_batch: bool = False, class_names=None) -> Path:
    """Write `model` in `format` (one of FORMATS) to `out`; see export_pt2 and export_onnx (an
    ONNX file always has a dynamic batch axis)."""
    check_destination(format, out)
    if format == "pt2":
        return export_pt2(model, out, dynamic_batch, class_names)
    return export_onnx(model, out, class_names)


def export_checkpoint(checkpoint, format: str, out, *, which: str = "best", dynamic_batch: bool = False,
                      device: str = "auto") -> Path:
    """Load `checkpoint` (a checkpoint file, or a run directory: its best.pt, `which="last"`
    its last.pt) on `device` and write it in `format` to `out` with its class names. The
    destination and the `export` extra are checked before anything is loaded."""
    check_destination(format, out)
    require_extra(format)
    model, payload = load_model(checkpoint_file(checkpoint, which), pick_device(device))
    return export_model(model, format, out, dynamic_batch, payload["class_names"])
