"""Training: full precision (fp), simultaneous pruning + quantization (spq), and post-pruning
quantization (ppq), with the hyperparameters of each recipe in one place (RECIPES).

Schedules (SPQ/PPQ paper, sections III-C and III-D):
- fp:  ``epochs`` epochs of full-precision training.
- spq: ``epochs`` epochs of APoT QAT from the start. At the end of every epoch the GM criterion on
       the full-precision weights of all filters picks int(N * rate) filters per conv. The test
       accuracy of every epoch is that of the pruned model (selected filters' outputs exactly 0), and
       after the last epoch the selection becomes a hard prune (weights and BatchNorm zeroed).
       Two ways to treat the selected filters during the next epoch (recipe field ``spq_revive``):
       - masked (default): the next epoch's forward pass ignores them. They then get no gradient,
         only weight decay, which shrinks them towards the geometric median's neighbourhood, so the
         same filters are selected again every epoch: ``returned_filters`` is always 0, and this is
         in effect "prune after epoch 1, then QAT" (90.57 % golden, docs/experiments.md round 7);
       - revive (``--set spq_revive=true``, the paper's and FPGM's soft pruning): their weights are
         set to zero and the next epoch trains all filters, so a selected filter is updated and may
         return at the next selection (counted in ``returned_filters``). A zeroed filter feeds
         BatchNorm a zero-variance channel whose gradient is scaled by 1/sqrt(eps). The layers after
         a selected filter gather their BatchNorm statistics with it active, so after each selection
         they are re-estimated for the selected network (``recalibrate_bn``,
         ``bn_recalibration_batches``); without that the round-8 GPU run reached 88 % train and 65 %
         test accuracy (docs/experiments.md). ``spq_revive_epochs`` = N > 0 revives during the
         first N epochs only, then masks: round 9's revive run (83.3 %) stopped returning filters
         after epoch 7 but kept losing the accuracy the regrown filters carried each epoch.
- ppq: ``epochs`` full-precision epochs with incremental hard GM pruning in ``prune_stages``
       stages (rate grows to the target; pruned filters never return), then ``qat_epochs`` epochs
       of APoT QAT of the pruned model at ``qat_lr``, optionally distilled from the pruned
       full-precision model.
Distillation (weight ``distill``, temperature ``distill_temperature``): by default only ppq's QAT
phase, from the pruned FP model; with ``teacher`` (``--teacher CKPT``, e.g. the unpruned FP32
model) every phase of every method, from that fixed model.

Reproducibility: the batch order and augmentation of epoch e come from a generator seeded with
(seed, e), and every checkpoint holds the optimizer and schedule state, so ``--resume`` continues
bit for bit (on the same device).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .atomic import write_text_atomic
from .checkpoint import model_from_state, read_checkpoint, save_checkpoint
from .data import augment, load_split
from .errors import ShiftPQError
from .models import ModelSpec, Net, model_input
from .pruning import gm_prune, kept_filters, layer_rates, zero_pruned
from .quant import calibrate_quantizers

METHODS = ("fp", "spq", "ppq")
RESIDUAL_PRUNING = ("grouped", "layer")


@dataclass(frozen=True)
class Recipe:
    epochs: int  # fp and spq: all epochs; ppq: the full-precision pruning phase
    qat_epochs: int  # ppq: QAT epochs after pruning
    prune_stages: int  # ppq: incremental pruning stages, evenly spaced, the last followed by fine-tuning
    batch_size: int  # images per optimizer step
    lr: float  # peak learning rate of fp / spq / the ppq pruning phase
    qat_lr: float  # peak learning rate of the ppq QAT phase
    momentum: float
    nesterov: bool
    weight_decay: float  # L2 on weights and BatchNorm parameters
    qat_weight_decay: float  # the same in the ppq QAT phase
    schedule: str  # "plateau": lr x plateau_factor after plateau_patience epochs without a better
    #                test accuracy (the paper's rule); "cosine": linear warm-up then cosine to 0
    warmup_epochs: float  # cosine only
    plateau_factor: float
    plateau_patience: int  # epochs
    label_smoothing: float
    alpha_act_lr: float  # base lr of activation clipping thresholds (APoT reference code)
    alpha_w_lr: float  # base lr of weight clipping thresholds
    alpha_weight_decay: float
    distill: float  # weight of the distillation loss from the full-precision model in ppq QAT (0: off)
    distill_temperature: float
    spq_revive: bool = False  # spq: selected filters are zeroed and keep training (may return), not masked
    bn_recalibration_batches: int = 20  # spq_revive: batches of training images that re-estimate the
    #                                     BatchNorm statistics after each selection (recalibrate_bn)
    spq_revive_epochs: int = 0  # spq_revive: revive in the first N epochs only, masked after (0: all epochs)
    cutout: int = 0  # side of a square of each training image set to the padding value (data.augment); 0: off


RECIPES: dict[str, Recipe] = {
    # Seed paper section IV-A: SGD momentum 0.9, wd 5e-4, batch 128, lr 0.1 x0.9 every 3 epochs
    # without improvement; PPQ quantizes the pruned model at lr 0.01. Epoch counts follow its
    # convergence curves (ResNets converge near epoch 200; PPQ QAT about 50 more epochs).
    "paper": Recipe(epochs=200, qat_epochs=50, prune_stages=3, batch_size=128, lr=0.1, qat_lr=0.01,
                    momentum=0.9, nesterov=False, weight_decay=5e-4, qat_weight_decay=5e-4,
                    schedule="plateau", warmup_epochs=0.0, plateau_factor=0.9, plateau_patience=3,
                    label_smoothing=0.0, alpha_act_lr=0.1, alpha_w_lr=0.02, alpha_weight_decay=1e-4,
                    distill=0.0, distill_temperature=1.0),
    # A GPU recipe: large batch, warm-up + cosine, label smoothing, nesterov, and distillation from
    # the pruned full-precision model during QAT.
    "fast": Recipe(epochs=60, qat_epochs=30, prune_stages=3, batch_size=512, lr=0.4, qat_lr=0.02,
                   momentum=0.9, nesterov=True, weight_decay=5e-4, qat_weight_decay=1e-4,
                   schedule="cosine", warmup_epochs=2.0, plateau_factor=0.9, plateau_patience=3,
                   label_smoothing=0.1, alpha_act_lr=0.1, alpha_w_lr=0.02, alpha_weight_decay=1e-4,
                   distill=0.5, distill_temperature=2.0),
}


def recipe_with(name: str, overrides: dict[str, str]) -> Recipe:
    """A named recipe with ``field=value`` overrides, each parsed as its field's type."""
    if name not in RECIPES:
        raise ShiftPQError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
    base = RECIPES[name]
    types = {f.name: type(getattr(base, f.name)) for f in fields(Recipe)}
    changes = {}
    for key, text in overrides.items():
        if key not in types:
            raise ShiftPQError(f"unknown recipe field {key!r}; fields are {', '.join(types)}")
        try:
            if types[key] is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                changes[key] = text.lower() in ("true", "1")
            else:
                changes[key] = types[key](text)
                if types[key] is float and not math.isfinite(changes[key]):
                    raise ValueError(text)
        except ValueError:
            what = "a finite float" if types[key] is float else f"a {types[key].__name__}"
            raise ShiftPQError(f"recipe field {key!r} needs {what}, got {text!r}") from None
    r = replace(base, **changes)
    if r.schedule not in ("plateau", "cosine"):
        raise ShiftPQError(f"recipe field 'schedule' must be 'plateau' or 'cosine', got {r.schedule!r}")
    if r.spq_revive_epochs and not r.spq_revive:
        raise ShiftPQError(f"recipe field 'spq_revive_epochs' is {r.spq_revive_epochs}: it needs spq_revive=true")
    if not 0 <= r.cutout <= 32:
        raise ShiftPQError(f"recipe field 'cutout' must be a square side in [0, 32] pixels, got {r.cutout}")
    if r.epochs < 1 or r.batch_size < 1 or r.prune_stages < 1 or r.qat_epochs < 0 or r.spq_revive_epochs < 0:
        raise ShiftPQError("recipe fields 'epochs', 'batch_size', 'prune_stages' must be >= 1 and 'qat_epochs', "
                           "'spq_revive_epochs' >= 0")
    return r


def total_epochs(method: str, epochs: int, qat_epochs: int) -> int:
    """Epochs of a run: ppq adds its QAT epochs to the pruning phase's."""
    return epochs + (qat_epochs if method == "ppq" else 0)


@dataclass
class TrainConfig:
    """What defines a run (compared on --resume). Runtime options live in ``train()``'s arguments."""
    method: str
    spec: ModelSpec
    recipe: Recipe
    recipe_name: str = "fast"
    rate: float = 0.3
    layer_rates: dict[str, float] = field(default_factory=dict)
    residual_pruning: str = "grouped"  # "grouped": a residual stream's convs prune the same channels; "layer"
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    init: str | None = None
    teacher: str | None = None  # distil from this checkpoint's model in every phase (recipe.distill)

    def to_json(self) -> dict:
        d = asdict(self)
        d["spec"] = self.spec.to_json()
        return d

    @property
    def total_epochs(self) -> int:
        return total_epochs(self.method, self.recipe.epochs, self.recipe.qat_epochs)

    def phase(self, epoch: int) -> str:
        if self.method == "ppq":
            return "prune" if epoch < self.recipe.epochs else "qat"
        return self.method

    def prune_epochs(self) -> dict[int, float]:
        """ppq: epoch index at whose start pruning reaches each stage's rate."""
        s = self.recipe.prune_stages
        return {round(self.recipe.epochs * k / (s + 1)): k / s for k in range(1, s + 1)}


class _Schedule:
    """Learning-rate multiplier of one phase: cosine with warm-up, or the paper's plateau rule."""

    def __init__(self, recipe: Recipe, epochs: int, steps_per_epoch: int, state: dict | None = None):
        self.r, self.epochs, self.spe = recipe, epochs, steps_per_epoch
        self.state = state or {"factor": 1.0, "best": -1.0, "bad": 0}

    def multiplier(self, epoch_in_phase: int, step: int) -> float:
        if self.r.schedule == "plateau":
            return self.state["factor"]
        t = (epoch_in_phase * self.spe + step + 1) / self.spe  # epochs done, fractional
        warm = self.r.warmup_epochs
        if t <= warm:
            return t / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(1e-9, self.epochs - warm))))

    def end_epoch(self, test_acc: float) -> None:
        if self.r.schedule != "plateau":
            return
        if test_acc > self.state["best"]:
            self.state["best"], self.state["bad"] = test_acc, 0
        else:
            self.state["bad"] += 1
            if self.state["bad"] >= self.r.plateau_patience:
                self.state["factor"] *= self.r.plateau_factor
                self.state["bad"] = 0


def _optimizer(model: Net, recipe: Recipe, qat: bool) -> torch.optim.SGD:
    act_alphas = [q.alpha for q in model.act_quantizers().values()]
    w_alphas = [l.wq.alpha for l in model.weight_layers().values()]
    alpha_ids = {id(p) for p in act_alphas + w_alphas}
    rest = [p for p in model.parameters() if id(p) not in alpha_ids]
    lr, wd = (recipe.qat_lr, recipe.qat_weight_decay) if qat else (recipe.lr, recipe.weight_decay)
    groups = [{"params": rest, "lr": lr, "weight_decay": wd, "base_lr": lr},
              {"params": act_alphas, "lr": recipe.alpha_act_lr, "weight_decay": recipe.alpha_weight_decay,
               "base_lr": recipe.alpha_act_lr},
              {"params": w_alphas, "lr": recipe.alpha_w_lr, "weight_decay": recipe.alpha_weight_decay,
               "base_lr": recipe.alpha_w_lr}]
    return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


@torch.no_grad()
def recalibrate_bn(model: Net, images: torch.Tensor, count: int, batch: int,
                   generator: torch.Generator | None = None, amp: bool = False) -> None:
    """Re-estimate every BatchNorm's running statistics for the network as it is now: the cumulative
    mean and variance over ``count`` training images (uint8; a random subset, augmented, when a
    ``generator`` is given, else the first ``count``) in train mode, without gradients. SPQ's revive
    variant needs it: an epoch trains every filter, so the layers after a selected filter gathered
    their statistics with it, but the test and the next selection see it zeroed (round 8 of
    docs/experiments.md: 88 % train against 65 % test accuracy without it)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    n = min(count, len(images))
    idx = torch.randperm(len(images), generator=generator, device=images.device)[:n] if generator is not None \
        else torch.arange(n, device=images.device)
    for i in range(0, n, batch):
        x = images[idx[i:i + batch]]
        x = augment(x, generator) if generator is not None else x
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            model(model_input(x))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was_training)


@torch.no_grad()
def evaluate(model: Net, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000, amp: bool = False) -> float:
    """Top-1 accuracy (%) in eval mode; images are uint8 on the model's device."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for i in range(0, len(labels), batch):
        x = model_input(images[i:i + batch])
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            correct += (model(x).argmax(1) == labels[i:i + batch]).sum()
    model.train(was_training)
    return 100.0 * float(correct) / len(labels)


def _loss(logits, labels, recipe: Recipe, teacher_logits=None):
    loss = F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
    if teacher_logits is not None and recipe.distill > 0:
        t = recipe.distill_temperature
        kd = F.kl_div(F.log_softmax(logits.float() / t, 1), F.log_softmax(teacher_logits.float() / t, 1),
                      reduction="batchmean", log_target=True) * t * t
        loss = (1 - recipe.distill) * loss + recipe.distill * kd
    return loss


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


class Trainer:
    def __init__(self, cfg: TrainConfig, out: Path, device: str, data_dir: str | None,
                 progress: bool = True, compile_model: bool = False, amp: bool = True):
        self.cfg, self.out, self.progress = cfg, out, progress
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        xtr, ytr = load_split(data_dir, "train", cfg.train_limit)
        xte, yte = load_split(data_dir, "test", cfg.test_limit)
        self.xtr, self.ytr = xtr.to(self.device), ytr.to(self.device)
        self.xte, self.yte = xte.to(self.device), yte.to(self.device)
        self.compile_model = compile_model
        self.teacher: Net | None = None
        if cfg.residual_pruning not in RESIDUAL_PRUNING:
            raise ShiftPQError(f"residual pruning must be one of {RESIDUAL_PRUNING}, got {cfg.residual_pruning!r}")
        self.grouped = cfg.residual_pruning == "grouped"

    # -- state ---------------------------------------------------------------------------
    def fresh(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.model = Net(copy.deepcopy(cfg.spec))
        if cfg.init:
            self._load_init(cfg.init)
        if cfg.teacher:
            self._load_teacher(cfg.teacher)
        self.rates = layer_rates(self.model, cfg.rate, cfg.layer_rates)
        self.model.to(self.device)
        self.epoch = 0
        self._enter_phase(resumed=None)

    def _load_init(self, path: str) -> None:
        """Weights, BatchNorm statistics and masks from another run; quantizer clipping thresholds
        may be missing (a full-precision run of an older layout) and are calibrated anew anyway."""
        blob, meta = read_checkpoint(path)
        name = meta.get("spec", {}).get("name")
        if name != self.cfg.spec.name:
            raise ShiftPQError(f"--init {path}: field 'meta.spec.name' is {name!r}, expected {self.cfg.spec.name!r}")
        if "codes" in blob:
            raise ShiftPQError(f"--init {path}: a deployment checkpoint (field 'codes': quantized weights as level "
                               "indices, no float weights); training starts from a checkpoint with float weights")
        missing, unexpected = self.model.load_state_dict(blob["model"], strict=False)
        missing = [k for k in missing if not k.endswith("alpha")]
        if missing or unexpected:
            raise ShiftPQError(f"--init {path}: field 'model' does not fit {name}: missing {missing}, "
                               f"unexpected {unexpected}")

    def _load_teacher(self, path: str) -> None:
        """A fixed teacher for distillation: the unpruned FP32 model of the same architecture, or any
        other model of the zoo (all classify CIFAR-10), e.g. a deeper ResNet for a ResNet-20."""
        from .checkpoint import load_model
        if self.cfg.recipe.distill <= 0:
            raise ShiftPQError(f"--teacher {path}: recipe field 'distill' is {self.cfg.recipe.distill}, expected > 0")
        teacher, _ = load_model(path)
        if teacher.quantized:  # a checkpoint (and --resume) keeps the teacher as full-precision weights only
            raise ShiftPQError(f"--teacher {path}: field 'meta.quantized' is true; distil from a full-precision "
                               "model (e.g. models/resnet20-fp.pt or a deeper ResNet's FP32 phase)")
        self.teacher = teacher.to(self.device).eval()
        if self.device.type == "cuda":
            self.teacher.to(memory_format=torch.channels_last)  # the layout the student's inputs have
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def resume(self, path: Path) -> None:
        blob, meta = read_checkpoint(path)
        saved, now = meta["config"], json.loads(json.dumps(self.cfg.to_json()))
        added = {f.name: f.default for f in fields(Recipe) if f.default is not MISSING}
        saved = {**saved, "recipe": {**added, **saved.get("recipe", {})}}  # fields added since: their defaults
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff:
            raise ShiftPQError(f"{path}: cannot resume, the run was started with different settings: "
                               + "; ".join(f"{k}: {saved.get(k)!r} (checkpoint) vs {now.get(k)!r} (now)" for k in diff))
        self.model = model_from_state(meta["spec"], blob["model"], meta["quantized"], str(path)).to(self.device)
        self.rates = layer_rates(self.model, self.cfg.rate, self.cfg.layer_rates)
        self.epoch = meta["epoch"]
        if "teacher" in blob:
            spec = meta.get("teacher_spec", meta["spec"])  # a checkpoint from before teacher_spec: the same model
            self.teacher = model_from_state(spec, blob["teacher"], False, str(path)).to(self.device).eval()
            if self.device.type == "cuda":  # as in a fresh run (_load_teacher, the student's copy)
                self.teacher.to(memory_format=torch.channels_last)
        self._enter_phase(resumed=(blob.get("optimizer"), meta["schedule"]))

    def _enter_phase(self, resumed) -> None:
        """Set quantizers, masks, optimizer and schedule for the phase of ``self.epoch``."""
        cfg, model = self.cfg, self.model
        phase = cfg.phase(self.epoch)
        start = 0 if phase != "qat" else cfg.recipe.epochs
        quant = phase in ("spq", "qat")
        if quant and resumed is None:
            if phase == "qat" and cfg.recipe.distill > 0 and not cfg.teacher:
                self.teacher = copy.deepcopy(model).eval()
                for p in self.teacher.parameters():
                    p.requires_grad_(False)
            calibrate_quantizers(model, self.xtr[:512])
        model.set_quant(quant)
        self.phase_start = start
        phase_epochs = cfg.total_epochs - start if phase == "qat" else cfg.recipe.epochs
        self.opt = _optimizer(model, cfg.recipe, qat=(phase == "qat"))
        self.sched = _Schedule(cfg.recipe, phase_epochs, self._steps_per_epoch())
        if resumed is not None:
            opt_state, sched_state = resumed
            if opt_state is not None:
                self.opt.load_state_dict(opt_state)
            self.sched.state = sched_state
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(model) if self.compile_model else model

    def _steps_per_epoch(self) -> int:
        return max(1, len(self.ytr) // self.cfg.recipe.batch_size)

    def _checkpoint(self, name: str, extra: dict | None = None) -> Path:
        meta = {"config": self.cfg.to_json(), "epoch": self.epoch, "phase": self.cfg.phase(min(self.epoch, self.cfg.total_epochs - 1)),
                "schedule": self.sched.state, "finished": self.epoch >= self.cfg.total_epochs, **(extra or {})}
        path = self.out / name
        save_checkpoint(path, self.model, meta, self.opt, self.teacher)
        return path

    # -- one epoch -----------------------------------------------------------------------
    def _revives(self, epoch: int) -> bool:
        """SPQ revive: does epoch ``epoch`` (0-based) train the selected filters? (spq_revive_epochs)"""
        r = self.cfg.recipe
        return r.spq_revive and (r.spq_revive_epochs == 0 or epoch < r.spq_revive_epochs)

    def train_epoch(self) -> dict:
        cfg, model, r = self.cfg, self.model, self.cfg.recipe
        phase = cfg.phase(self.epoch)
        hard = phase in ("prune", "qat")
        if phase == "prune" and self.epoch in cfg.prune_epochs():
            stage_rate = cfg.prune_epochs()[self.epoch]
            gm_prune(model, {n: v * stage_rate for n, v in self.rates.items()}, incremental=True,
                     grouped=self.grouped)
            zero_pruned(model, self.opt)
        revive = phase == "spq" and self._revives(self.epoch)
        selected = {n: cb.conv.mask.clone() for n, cb in model.prunable().items()}  # the last selection
        if revive:  # the zeroed filters train with the others this epoch
            for cb in model.prunable().values():
                cb.conv.mask.fill_(1.0)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(cfg.seed * 1_000_003 + self.epoch)
        n, bs = len(self.ytr), min(r.batch_size, len(self.ytr))
        steps = self._steps_per_epoch()
        perm = torch.randperm(n, generator=gen, device=self.device)
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        t0 = time.perf_counter()
        ep_in_phase = self.epoch - self.phase_start
        with _progress(steps, f"{phase} epoch {self.epoch + 1}/{cfg.total_epochs}", self.progress) as bar:
            for step in range(steps):
                idx = perm[step * bs:(step + 1) * bs]
                x = model_input(augment(self.xtr[idx], gen, r.cutout))
                y = self.ytr[idx]
                mult = self.sched.multiplier(ep_in_phase, step)
                for g in self.opt.param_groups:
                    g["lr"] = g["base_lr"] * mult
                with torch.autocast("cuda", torch.bfloat16, enabled=self.amp):
                    logits = self.forward(x)
                    t_logits = None
                    if self.teacher is not None and (phase == "qat" or cfg.teacher):
                        with torch.no_grad():
                            t_logits = self.teacher(x)
                    loss = _loss(logits, y, r, t_logits)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                if hard:
                    zero_pruned(model, self.opt)
                loss_sum += loss.detach().float() * len(y)
                correct += (logits.argmax(1) == y).sum()
                bar.update(1)
        seen = steps * bs
        self.epoch += 1
        returned = None
        if phase == "spq":
            # end of an SPQ epoch: GM on the full-precision weights of all filters (pruned ones
            # included) selects the filters to prune; the last selection is final
            gm_prune(model, self.rates, incremental=False, grouped=self.grouped)
            returned = sum(int(((selected[n] == 0) & (cb.conv.mask != 0)).sum()) for n, cb in model.prunable().items())
            if self.epoch == cfg.total_epochs:
                zero_pruned(model, self.opt)
            elif revive:  # soft: the selected weights are zeroed, and their momentum if the next epoch masks them
                zero_pruned(model, None if self._revives(self.epoch) else self.opt, weights_only=True)
            if revive:  # the epoch trained every filter; the next test and epoch see the selection
                recalibrate_bn(model, self.xtr, r.bn_recalibration_batches * bs, bs, gen, self.amp)
        test_acc = evaluate(model, self.xte, self.yte, amp=self.amp)
        self.sched.end_epoch(test_acc)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return {"epoch": self.epoch, "phase": phase, "train_loss": float(loss_sum) / seen,
                "train_acc": 100.0 * float(correct) / seen, "test_acc": test_acc,
                "lr": self.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                "kept": kept_filters(model), "alphas": model.alphas() if model.quantized else {},
                **({"returned_filters": returned} if returned is not None else {})}


def read_log(path: Path) -> list[dict]:
    """The epoch records of a run's log.jsonl up to its first torn line (a run killed while writing)."""
    recs = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                break
            if not isinstance(rec, dict):
                break
            recs.append(rec)
    return recs


def _log_as_of(path: Path, epoch: int) -> None:
    """log.jsonl as the checkpoint of ``epoch`` left it: the records of later epochs (a run killed
    after logging an epoch, before its checkpoint was in place) and a torn line are dropped, so that
    the resumed run logs each epoch once."""
    if not path.is_file():
        return
    keep = [r for r in read_log(path) if r.get("epoch", 0) <= epoch]
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep)
    if path.read_text() != text:
        write_text_atomic(path, text)


def train(cfg: TrainConfig, out: str | Path, device: str = "cpu", data_dir: str | None = None,
          resume: bool = False, stop_after: int | None = None, time_limit: float | None = None,
          progress: bool = True, compile_model: bool = False, amp: bool = True, log=print) -> dict:
    """Run (or continue) a training run in ``out``; returns the summary written to summary.json."""
    out = Path(out)
    last = out / "last.pt"
    tr = Trainer(cfg, out, device, data_dir, progress, compile_model, amp)
    if resume and last.is_file():
        tr.resume(last)
        _log_as_of(out / "log.jsonl", tr.epoch)
        log(f"resumed {last} at epoch {tr.epoch}/{cfg.total_epochs}")
    else:
        if (out / "log.jsonl").exists() and not resume:
            raise ShiftPQError(f"{out}: run directory already holds a run; pass --resume to continue it "
                               "or choose another --out")
        _log_as_of(out / "log.jsonl", 0)  # --resume without last.pt: killed before its first checkpoint
        tr.fresh()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2, sort_keys=True) + "\n")
    t_start, done_now, longest = time.perf_counter(), 0, 0.0
    while tr.epoch < cfg.total_epochs:
        t_epoch = time.perf_counter()
        rec = tr.train_epoch()
        if tr.epoch < cfg.total_epochs and cfg.phase(tr.epoch) != rec["phase"]:
            tr._enter_phase(resumed=None)  # the checkpoint then already holds the new phase
        # the log line first, then the checkpoint: a run killed between them has logged an epoch its
        # checkpoint lacks, which --resume drops and runs again (the other order loses the line)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        tr._checkpoint("last.pt")
        log(f"epoch {rec['epoch']:>3}/{cfg.total_epochs} {rec['phase']:<5} loss {rec['train_loss']:.4f} "
            f"train {rec['train_acc']:.2f}% test {rec['test_acc']:.2f}% lr {rec['lr']:.4g} {rec['seconds']:.1f}s")
        done_now += 1
        if stop_after is not None and done_now >= stop_after and tr.epoch < cfg.total_epochs:
            log(f"stopping after {done_now} epochs as asked; continue with --resume")
            return {"finished": False, "epoch": tr.epoch}
        # stop before an epoch that would end past the limit, judged by the longest epoch of this call
        # (its first includes compilation, so this errs on the early side)
        longest = max(longest, time.perf_counter() - t_epoch)
        if (time_limit is not None and time.perf_counter() - t_start + longest > time_limit
                and tr.epoch < cfg.total_epochs):
            log(f"time limit: stopping after epoch {tr.epoch} (the next would end past {time_limit:.0f} s); "
                "continue with --resume")
            return {"finished": False, "epoch": tr.epoch}
    final_acc = evaluate(tr.model, tr.xte, tr.yte, amp=False)
    from .metrics import model_metrics
    m = model_metrics(tr.model.cpu(), quantized=tr.model.quantized)
    tr.model.to(tr.device)
    summary = {"finished": True, "epoch": tr.epoch, "method": cfg.method, "model": cfg.spec.name,
               "test_accuracy": final_acc, "test_images": len(tr.yte), "quantized": tr.model.quantized,
               "size_ratio": m["ratios"]["size"], "bops_ratio": m["ratios"]["bops"],
               "kept": kept_filters(tr.model), "device": str(tr.device)}
    tr._checkpoint("final.pt", {"test_accuracy": final_acc})
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log(f"done: {cfg.method} {cfg.spec.name} test accuracy {final_acc:.2f}% (fp32 eval), "
        f"size {m['ratios']['size']:.2f}x, BOPs {m['ratios']['bops']:.2f}x smaller; {out / 'final.pt'}")
    return summary
