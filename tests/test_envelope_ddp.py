"""The envelope under torch.distributed (SPEC A.7): two CPU processes (gloo) against one process on
the same global batches: the same ledger on every rank, the same weights and the same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import seglosses
from seglosses.envelope import TopKBottomSigma
from seglosses.pixel import CrossEntropyLoss
from seglosses.region import DiceLoss

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is unavailable"
)

WORLD = 2
N = 10
SHARD = 3  # rank 0 takes the first 3 images of each global batch of 5, rank 1 the other 2 (uneven)


def _data():
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(N, 2, 6, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (N, 6, 6), generator=gen)
    return inputs, labels


def _global_batches():
    gen = torch.Generator().manual_seed(1)
    batches = [(1, torch.arange(0, 5)), (1, torch.arange(5, 10))]
    for epoch in (2, 3, 4):
        order = torch.randperm(N, generator=gen)
        batches += [(epoch, order[:5]), (epoch, order[5:])]
    return batches


def _setup():
    torch.manual_seed(2)
    model = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    # Groups by label only: "class_prediction" also groups by the predicted class, and an untrained model's
    # near-tied logits flip their argmax under the last-bit differences of a DDP gradient average, which
    # moves whole pixels between groups; this test compares ledgers to 1e-12.
    criterion = TopKBottomSigma(0.3 * CrossEntropyLoss() + 0.7 * DiceLoss(), N, image_strategy="atk", smoothing="sm",
                                alpha_start=2.0, top_fraction=0.3, pixel_strategy="bsigma", pixel_groups="class",
                                staleness="relative", checksum_every=1)
    return model, criterion


def _run(model, criterion, shard):
    """Train over the global batches; ``shard(indices)`` picks this process's part of each."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    inputs, labels = _data()
    trace = []
    for epoch, batch in _global_batches():
        indices = shard(batch)
        loss = criterion(model(inputs[indices]), labels[indices], indices=indices, epoch=epoch)
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        diagnostics = criterion.diagnostics
        trace.append({"weights": diagnostics.weights, "ranks": diagnostics.ranks, "grads": grads, "K": diagnostics.K})
    return trace


def _count_reads(call) -> int:
    """How many tensor values ``call()`` reads back to the host, with value checks off (as on an accelerator)."""
    names = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "unique")
    originals = {name: getattr(torch.Tensor, name) for name in names}
    free = TopKBottomSigma._reads_are_free
    count = [0]

    def counted(original):
        def wrapper(*args, **kwargs):
            count[0] += 1
            return original(*args, **kwargs)

        return wrapper

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, counted(original))
        TopKBottomSigma._reads_are_free = lambda self: False
        with seglosses.value_checks(False):
            call()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        TopKBottomSigma._reads_are_free = free
    return count[0]


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model, criterion = _setup()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        trace = _run(ddp, criterion, lambda batch: batch[:SHARD] if rank == 0 else batch[SHARD:])
        result = {"trace": trace, "ledger": criterion.ledger.clone(), "scale": criterion.ledger_scale.clone(),
                  "params": [p.detach().clone() for p in model.parameters()]}

        # Repeated indices in the global batch (DistributedSampler padding, samplers with replacement): the
        # last occurrence in rank order wins, as in one process (test_envelope.py).
        duplicates = TopKBottomSigma("cross_entropy", 3, image_strategy="erm", smoothing="none")
        local = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([4.0, 3.0])
        duplicates.aggregate(local, torch.tensor([0, 1]) if rank == 0 else torch.tensor([1, 2]), epoch=1)
        result["duplicates"] = duplicates.ledger.clone()
        # ... and each occurrence is weighted by its index's rank (a hard top-1 box over the ledger [1, 4, 3]).
        top = TopKBottomSigma("cross_entropy", 3, image_strategy="atk", smoothing="none", top_fraction=0.34,
                              first_selective_epoch=1, batch_norm="batch_mean")
        top.ledger.copy_(torch.tensor([1.0, 4.0, 3.0], dtype=torch.float64))
        top.aggregate(torch.tensor([2.0, 5.0]) if rank == 0 else torch.tensor([6.0, 3.0]),
                      torch.tensor([0, 1]) if rank == 0 else torch.tensor([1, 2]), epoch=1)
        result["top_weights"] = top.diagnostics.weights.clone()
        result["top_ledger"] = top.ledger.clone()
        # Without indices an "erm" envelope still normalises by the global batch size (uneven shards).
        result["erm"] = duplicates.aggregate(torch.tensor([1.0, 2.0, 6.0]) if rank == 0 else torch.tensor([4.0]))

        # The first distributed call broadcasts rank 0's state (a checkpoint loaded on rank 0 only).
        resumed = TopKBottomSigma("cross_entropy", 4, image_strategy="erm", smoothing="none")
        if rank == 0:
            resumed.ledger.copy_(torch.tensor([0.5, 0.25, 1.0, 2.0], dtype=torch.float64))
        resumed.aggregate(torch.tensor([3.0]), torch.tensor([rank]), epoch=2)
        result["resumed"] = resumed.ledger.clone()

        # Host reads (syncs on an accelerator) of a training call after warm-up, value checks off: exactly one,
        # the largest local batch size that sizes the padded all_gather (docs/envelope.md, "Cost").
        synced = TopKBottomSigma("cross_entropy", 4, image_strategy="atk", top_fraction=0.5, rank_method="count",
                                 checksum_every=0)
        synced.aggregate(torch.tensor([1.0, 2.0]), torch.tensor([2 * rank, 2 * rank + 1]), epoch=1)
        synced.selection(2)  # the soft count K is computed on the host once per box (CPU tensors, no device)
        result["reads"] = _count_reads(lambda: synced.aggregate(torch.tensor([3.0, 1.0, 1.0]),
                                                                torch.tensor([rank, 2, 2]), epoch=2))

        # Diverged replicas are caught by the checksum.
        if rank == 1:
            resumed.ledger[3] += 1.0
        try:
            resumed.verify_replicas()
            result["caught"] = False
        except RuntimeError:
            result["caught"] = True
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_same_global_batches(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]

    model, criterion = _setup()
    reference = _run(model, criterion, lambda batch: batch)

    for rank_result in ranks:  # the replicas are bit-identical ...
        assert torch.equal(rank_result["ledger"], ranks[0]["ledger"])
        assert torch.equal(rank_result["scale"].nan_to_num(-1.0), ranks[0]["scale"].nan_to_num(-1.0))
    # ... and equal to the single-process ledger.
    torch.testing.assert_close(ranks[0]["ledger"], criterion.ledger, rtol=1e-12, atol=1e-14)
    selective_steps = 0
    for step, expected in enumerate(reference):
        parts = [ranks[0]["trace"][step], ranks[1]["trace"][step]]
        assert torch.equal(torch.cat([p["ranks"] for p in parts]), expected["ranks"]), step
        torch.testing.assert_close(torch.cat([p["weights"] for p in parts]), expected["weights"], rtol=1e-10, atol=0)
        assert parts[0]["K"] == parts[1]["K"] == pytest.approx(expected["K"], rel=1e-12)
        for got0, got1, want in zip(parts[0]["grads"], parts[1]["grads"], expected["grads"], strict=True):
            assert torch.equal(got0, got1)  # DDP averaged them
            torch.testing.assert_close(got0, want, rtol=1e-9, atol=1e-12)
        selective_steps += bool((expected["weights"] < 1).any())
    assert selective_steps >= 3
    for got, want in zip(ranks[0]["params"], model.parameters(), strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-12)

    for rank_result in ranks:
        assert rank_result["duplicates"].tolist() == [1.0, 4.0, 3.0]
        assert rank_result["top_ledger"].tolist() == [2.0, 6.0, 3.0]
        assert rank_result["resumed"].tolist() == [3.0, 3.0, 1.0, 2.0]
        assert rank_result["caught"]
        assert rank_result["reads"] == 1
    assert (ranks[0]["erm"] + ranks[1]["erm"]).item() / WORLD == pytest.approx((1 + 2 + 6 + 4) / 4)
    assert ranks[0]["top_weights"].tolist() == [0.0, 1.0] and ranks[1]["top_weights"].tolist() == [1.0, 0.0]
