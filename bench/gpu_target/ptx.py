"""What the compiler produced, per binary: PTX features (MMA class, global load and cp.async
widths), ptxas's resource log (registers, spills; rebuilt through Triton's own make_cubin for a
binary that came from the disk cache) and theoretical occupancy on the target."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

from .driver import cubin_resources
from .targets import ArchSpec
from .tracing import Tracker


def ptx_features(ptx: str) -> dict:
    if "tcgen05.mma" in ptx:  # Blackwell's tensor-memory MMA (sm_100)
        mma = "tcgen05"
    elif "wgmma.mma_async" in ptx:
        mma = "wgmma"
    elif "mma.sync" in ptx:
        mma = "mma.sync"
    else:
        mma = "FMA"
    mma_shapes = sorted(set(re.findall(r"\b((?:tcgen05\.mma|wgmma\.mma_async|mma\.sync)[\w.:]*)", ptx)))

    def widths(opcode_prefix):
        counts = defaultdict(int)
        for opcode in re.findall(rf"\b{opcode_prefix}[\w.:]*", ptx):
            parts = opcode.split(".")
            vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
            bits = next((int(p[1:]) for p in reversed(parts) if re.fullmatch(r"[bsuf]\d+", p)), None)
            if bits is not None:
                counts[vec * bits] += 1
        return {str(k): counts[k] for k in sorted(counts)}

    cp_async = defaultdict(int)
    pattern = r"\bcp\.async\.c[ag]\.shared\.global[\w.:]*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)"
    for size in re.findall(pattern, ptx):  # ptxas-bound PTX writes the size in hex
        cp_async[int(size, 0)] += 1
    return {
        "mma": mma,
        "mma_instructions": mma_shapes,
        "global_loads": widths(r"ld\.global"),
        "global_stores": widths(r"st\.global"),
        "cp_async": {str(k): cp_async[k] for k in sorted(cp_async)},
        "tma_bulk": len(re.findall(r"\bcp\.async\.bulk\b", ptx)),
    }


def parse_ptxas_log(log: str, name: str) -> dict | None:
    block = log.split(f"Function properties for {name}")
    if len(block) < 2:
        return None
    body = block[1]
    spills = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", body)
    regs = re.search(r"Used (\d+) registers", body)
    if not (spills and regs):
        return None
    return {"stack": int(spills.group(1)), "spill_stores": int(spills.group(2)),
            "spill_loads": int(spills.group(3)), "registers": int(regs.group(1))}


def rerun_ptxas(meta: dict, ptx: str) -> tuple[str, bytes]:
    """ptxas -v again through the backend's own make_cubin (same flags as the original build),
    for binaries that came from the disk cache (their log is gone)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDAOptions
    from triton.compiler import make_backend

    target = GPUTarget(**meta["target"])
    backend = make_backend(target)
    fields = {k: meta[k] for k in CUDAOptions.__dataclass_fields__ if k in meta}
    options = backend.parse_options(fields)
    out = io.StringIO()
    with knobs.nvidia.scope(), contextlib.redirect_stdout(out):
        knobs.nvidia.dump_ptxas_log = True  # make_cubin prints the ptxas -v log only when asked
        cubin = backend.make_cubin(ptx, {}, options, target.arch)
    return out.getvalue(), cubin


def occupancy(spec: ArchSpec, regs: int, smem: int, warps: int, tmem_columns: int = 0) -> dict:
    per_warp = max(1, math.ceil(regs * 32 / spec.reg_unit)) * spec.reg_unit
    per_cta_smem = math.ceil((smem + spec.smem_reserved_per_cta) / spec.smem_granule) * spec.smem_granule
    limits = {
        "registers": (spec.regs_per_sm // per_warp) // warps,
        "shared memory": spec.smem_per_sm // per_cta_smem,
        "warps": spec.max_warps_per_sm // warps,
        "CTAs": spec.max_ctas_per_sm,
    }
    if tmem_columns:  # sm_100: 512 columns of tensor memory per SM
        limits["tensor memory"] = 512 // tmem_columns
    ctas = min(limits.values())
    binding = [k for k, v in limits.items() if v == ctas]
    return {"ctas_per_sm": ctas, "warps_per_sm": ctas * warps, "limited_by": binding, "limits": limits}


def analyse(hash_, record: dict, spec: ArchSpec, tracker: Tracker) -> dict:
    files = record["files"]
    by_ext = {Path(name).suffix.lstrip("."): path for name, path in files.items()}
    meta = json.loads(Path(by_ext["json"]).read_text())
    name = meta["name"]
    cubin_path, ptx = Path(by_ext["cubin"]), Path(by_ext["ptx"]).read_text()
    res = cubin_resources(cubin_path)
    log, identical = record["ptxas_log"], None
    if parse_ptxas_log(log, name) is None:  # from the disk cache: rebuild to get the log
        log, cubin = rerun_ptxas(meta, ptx)
        identical = cubin == cubin_path.read_bytes()
    ptxas = parse_ptxas_log(log, name)
    if identical is False and ptxas is not None:
        # Not the same build (ptxas options or version changed since it was cached): its
        # spill counts would describe another binary.
        print(f"warning: {name}: rebuilding the cached PTX gave a different cubin; spills unknown", file=sys.stderr)
        ptxas.update(spill_stores=None, spill_loads=None, stack=None, registers=res["reg"])
    if ptxas is None:
        tracker.fail(name, "no ptxas -v resource line for the entry function", log)
        ptxas = {"stack": None, "spill_stores": None, "spill_loads": None, "registers": None}
    elif ptxas["registers"] != res["reg"]:
        tracker.fail(name, f"ptxas -v says {ptxas['registers']} registers, the cached cubin {res['reg']}", log)
    shared = int(meta["shared"]) + res["shared"]
    warps = int(meta["num_warps"])
    spill = None if ptxas["spill_stores"] is None else ptxas["spill_stores"] + ptxas["spill_loads"]
    return {
        "name": name,
        "hash": hash_,
        "registers": res["reg"],
        "spill_stores": ptxas["spill_stores"],
        "spill_loads": ptxas["spill_loads"],
        "spill_bytes": spill,
        "stack_bytes": res["stack"],
        "local_bytes": res["local"],
        "shared_bytes": shared,
        "shared_dynamic": int(meta["shared"]),
        "shared_static": res["shared"],
        "num_warps": warps,
        "num_stages": int(meta["num_stages"]),
        "occupancy": occupancy(spec, res["reg"], shared, warps, int(meta.get("tmem_size") or 0)),
        **ptx_features(ptx),
        "cubin": str(cubin_path),
        "ptx": str(by_ext["ptx"]),
        "cache_hit": record["cache_hit"],
        "compile_seconds": record["compile_seconds"],
        "ptxas_rerun_identical": identical,
        "constants": record["constants"],
        "signature": record["signature"],
    }


def _layers_text(layers) -> str:
    known = sorted(x for x in layers if isinstance(x, int))
    other = sorted(str(x) for x in layers if not isinstance(x, int))
    items = [str(x) for x in known] + other
    if not items:
        return ""
    return (", SimpleNet layer " if len(items) == 1 else ", SimpleNet layers ") + ",".join(items)


def build_rows(tracker: Tracker, spec: ArchSpec) -> list:
    uses = defaultdict(lambda: defaultdict(set))  # hash -> op label -> layers
    grids = defaultdict(list)
    dtypes = defaultdict(list)
    first = {}
    counts = defaultdict(int)
    for launch in tracker.launches:
        h = launch["hash"]
        first.setdefault(h, launch["index"])
        counts[h] += 1
        layers = uses[h][launch["op"]]
        if launch["layer"] is not None:
            layers.add(launch["layer"])
        if launch["grid"] not in grids[h]:
            grids[h].append(launch["grid"])
        if launch["dtype"] not in dtypes[h]:
            dtypes[h].append(launch["dtype"])
    rows = []
    for h in sorted(first, key=first.get):
        tracker.op, tracker.dtype = ("resource check", None), ",".join(dtypes[h])  # labels any failure below
        row = analyse(h, tracker.compiled[h], spec, tracker)
        row["used_by"] = "; ".join(op + _layers_text(layers) for op, layers in uses[h].items())
        row["uses"] = [{"op": op, "layers": sorted(map(str, layers))} for op, layers in uses[h].items()]
        row["dtype"] = ",".join(dtypes[h])
        row["grids"] = grids[h]
        row["launches"] = counts[h]
        rows.append(row)
    return rows
