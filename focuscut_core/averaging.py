"""Weight averaging: the mean of several weights files of one training run (stochastic weight
averaging, Izmailov et al. 2018), with BatchNorm statistics recomputed on training batches.

    python -m focuscut_core.averaging --run-dir runs/mnv2-adam --out averaged.pt [--bn-batches 32] SNAP.pt ...

Snapshots a few hundred Adam steps apart sit around a minimum rather than in it; their mean is
usually nearer to it than any one of them. The averaged weights' BatchNorm running statistics are
not the mean of the snapshots' (the features moved with the weights), so they are measured again:
BatchNorm's running mean and variance are reset and accumulated as plain averages over
``bn_batches`` training batches drawn as the run draws them (global views, iterative-training
previous masks from the averaged network itself, and focus patches).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import data_root
from .network import FocusCutNet, select_device
from .train import TrainConfig, Trainer, encode, training_sources
from .weights import load_weights, save_weights


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of float tensors over ``states`` (same keys and shapes); integer
    tensors (BatchNorm's batch counters) are taken from the last state."""
    if not states:
        raise ValueError("nothing to average")
    keys = states[0].keys()
    for state in states[1:]:
        if state.keys() != keys:
            raise ValueError("the states to average hold different tensors")
    averaged = {}
    for key in keys:
        if states[0][key].is_floating_point():
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(0)
        else:
            averaged[key] = states[-1][key].clone()
    return averaged


@torch.no_grad()
def recompute_batchnorm(net: nn.Module, batches: list[torch.Tensor]) -> None:
    """Reset every BatchNorm's running mean and variance and set them to the plain average over
    ``batches`` (each an Nx6xHxW input) in training mode; the weights are not touched."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
    was_training = net.training
    net.train()
    try:
        for x in batches:
            net(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        net.train(was_training)


def training_batches(net: FocusCutNet, config: TrainConfig, count: int, seed: int = 0,
                     device: torch.device | None = None) -> list[torch.Tensor]:
    """``count`` input batches (2B x 6 x crop x crop) drawn as the run ``config`` draws them, the
    iterative-training masks predicted by ``net`` as it is now (eval mode)."""
    device = device or next(net.parameters()).device
    trainer = Trainer(net, config, device, training_sources(data_root(), config.source_weights))
    batches = []
    for i in range(count):
        global_views, focus_views = trainer.make_batch(np.random.default_rng([seed, i]))
        batches.append(torch.from_numpy(np.stack([encode(v) for v in global_views + focus_views])).to(device))
    return batches


def average_weights(paths: list[Path], config: TrainConfig, bn_batches: int = 32, seed: int = 0,
                    device: torch.device | None = None) -> tuple[FocusCutNet, dict]:
    """The averaged network of the weights files ``paths`` (one spec), BatchNorm recomputed on
    ``bn_batches`` batches of the run ``config``; and metadata naming its inputs."""
    nets, metas = zip(*(load_weights(p) for p in paths))
    if len({n.spec for n in nets}) != 1:
        raise ValueError("the weights files have different network specs")
    net = FocusCutNet(nets[0].spec)
    net.load_state_dict(average_states([n.state_dict() for n in nets]))
    net.to(device or torch.device("cpu"))
    if bn_batches:
        recompute_batchnorm(net, training_batches(net.eval(), config, bn_batches, seed))
    steps = [m.get("steps") for m in metas]
    meta = {"averaged": [str(m.get("version", Path(p).stem)) for m, p in zip(metas, paths)],
            "steps": max((s for s in steps if s is not None), default=None),
            "bn_batches": bn_batches, "config": metas[-1].get("config")}
    return net.eval(), meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m focuscut_core.averaging", description=__doc__.split("\n\n")[0])
    parser.add_argument("snapshots", nargs="+", type=Path, help="weights files of one run")
    parser.add_argument("--run-dir", type=Path, required=True, help="the run (its config.json draws the BN batches)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--version", help="the model version recorded in the file (default: OUT's stem)")
    parser.add_argument("--bn-batches", type=int, default=32, help="training batches for BatchNorm (0: keep the mean)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig.from_dict(json.loads((args.run_dir / "config.json").read_text()))
    try:
        net, meta = average_weights(args.snapshots, config, args.bn_batches, args.seed, select_device(args.device))
    except ValueError as exc:
        parser.error(str(exc))
    meta["version"] = args.version or args.out.stem
    save_weights(args.out, net, meta)
    print(f"wrote {args.out}: mean of {len(args.snapshots)} snapshots, BatchNorm over {args.bn_batches} batches",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
