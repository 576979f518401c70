"""Evaluation under torchrun: every rank evaluates rank 0's model. DDP sends buffers only at the
start of a forward, so after an epoch's last step a BatchNorm backbone's running statistics
differ between ranks; the recorded accuracy must still be the checkpoint's (rank 0's) model's."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lnlatten_fast as lf
from lnlatten_fast.data.cache import ImageSet
from lnlatten_fast.training.distributed import Context
from lnlatten_fast.training.evaluation import evaluate

CONFIG = lf.LNLConfig.tiny(image_size=32, backbone="module:backbone_standins:resnet18_standin")


def _model(rank: int) -> lf.LNLAttenNet:
    torch.manual_seed(0)
    model = lf.LNLAttenNet(CONFIG)
    if rank:  # this rank's last batch moved its statistics: another model unless rank 0's is sent
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if "running_mean" in name:
                    buffer.add_(3.0)
    return model


def _images() -> ImageSet:
    images = np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    return ImageSet(images, np.arange(10, dtype=np.int64) % CONFIG.num_classes)


def _rank(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model = _model(rank)
        result = evaluate(model, _images(), 4, Context(rank, 2, torch.device("cpu")), "fp32")
        torch.save({"buffers": dict(model.named_buffers()), "confusion": result["confusion"]}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_every_rank_evaluates_with_rank_0s_batchnorm_statistics(tmp_path):
    """After evaluate, rank 1's model holds rank 0's buffers (what it evaluated with), and the
    summed confusion matrix counts every image once."""
    out = str(tmp_path / "rank")
    mp.spawn(_rank, args=(str(tmp_path / "store"), out), nprocs=2, join=True)
    rank_0 = dict(_model(0).named_buffers())
    for rank in (0, 1):
        seen = torch.load(f"{out}.{rank}", weights_only=True)
        assert seen["buffers"].keys() == rank_0.keys()
        for name, buffer in seen["buffers"].items():
            assert torch.equal(buffer, rank_0[name]), (rank, name)
        assert sum(map(sum, seen["confusion"])) == 10
