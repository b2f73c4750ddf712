"""The data-free generator game (Zhang et al., CVPR 2021) and the generator-only input source (``--mode generator``).

Every ``student_steps_per_g`` student steps G takes one step on L_G = -log(L_KD + 1) + w_R ||R(T(G(z))) - G(z)||_1
(+ priors; the adversarial term only after ``g_warmup`` steps); its samples and the teacher's outputs on them go
to the replay buffer. An EMA copy of G (``g_ema``) makes the samples of refills and is what generator.pt holds.
A refining G refines crops of the labelled pool when the run has one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..generator import make_generator
from ..grown import base_kinds
from ..losses import generator_loss
from .base import Pair, Plain
from .label import Labeller, is_oom
from .synthetic import SyntheticPool


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """Move ``ema``'s parameters towards ``model``'s by ``1 - decay`` and copy its buffers (BatchNorm statistics)."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


class GeneratorGame:
    """G, its EMA copy and optimiser, and the step of the game (module docstring). Build it right after
    ``torch.manual_seed(seed)``: G's initial weights come from the global random generator."""

    def __init__(self, cfg, g: torch.Generator, label: Labeller, world: int, pool: SyntheticPool | None = None):
        self.cfg, self.g, self.label, self.pool = cfg, g, label, pool
        self.gen = make_generator(cfg.g_kind, cfg.lr_patch, cfg.z_dim,
                                  base_kinds(cfg.synthetic.split(","))[0]).to(label.device)
        self.ema = copy.deepcopy(self.gen).eval()
        self.opt = torch.optim.Adam(self.gen.parameters(), lr=cfg.g_lr, betas=(0.5, 0.999))
        self.ddp = DDP(self.gen) if world > 1 else self.gen
        self.steps = 0

    def base(self, n: int) -> dict:
        """Return the keyword arguments that make a refining G refine ``n`` crops of the pool (no rendering):
        ``{"base": crops}``, or ``{}`` without a pool or with a latent G."""
        pool = self.pool.pool if self.pool is not None else None
        if pool is None or not getattr(self.gen, "any_size", False):
            return {}
        return {"base": pool.crops(n, self.cfg.lr_patch, self.g, with_targets=False).to(self.label.device)}

    def sample(self, n: int) -> torch.Tensor:
        """Return ``n`` samples of the EMA generator (no gradient), refining pool crops when there is a pool."""
        return self.ema.sample(n, self.g, **self.base(n))

    def step(self, student: nn.Module) -> tuple[dict[str, float], Pair]:
        """Take one generator step against ``student``; return (L_G's parts, the labelled samples)."""
        cfg, label = self.cfg, self.label
        self.gen.train()
        z = self.gen.draw_latent(cfg.batch, self.g, **self.base(cfg.batch))
        student.requires_grad_(False)
        try:
            x = self.ddp(z)
            t = label.forward(x)
            with label.student_autocast():
                s = student(label.fmt(x)).float()
            adversarial = self.steps >= cfg.g_warmup
            loss, parts = generator_loss(x, z, t, s, cfg.scale, cfg.w_r, cfg.w_div, cfg.w_nat, adversarial,
                                         cfg.kd_loss)
            if not torch.isfinite(loss):
                raise FloatingPointError("generator")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.gen.parameters(), 1.0)
            self.opt.step()
        except RuntimeError as exc:
            if is_oom(exc):
                raise label.oom_error(exc, cfg.batch, "forward and backward (generator step)") from None
            raise
        finally:
            student.requires_grad_(True)
        self.steps += 1
        ema_update(self.ema, self.gen, cfg.g_ema)
        return parts, (x.detach(), label.target(t.detach()))

    def state_dict(self) -> dict:
        """Return G, its EMA copy, its optimiser and the step count (state.pt's ``gen*`` and ``g_steps``)."""
        return {"gen": self.gen.state_dict(), "gen_ema": self.ema.state_dict(), "gen_opt": self.opt.state_dict(),
                "g_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (a state without ``gen`` keeps G as it is)."""
        if "gen" in state:
            self.gen.load_state_dict(state["gen"])
            self.ema.load_state_dict(state["gen_ema"])
            self.opt.load_state_dict(state["gen_opt"])
        self.steps = state.get("g_steps", 0)


class GamePlayer(Plain):
    """Shared parts of the sources that play the generator game: its state, its step and generator.pt."""

    patch_multiple, min_batch, plays = 4, 2, True
    game: GeneratorGame

    @property
    def generator(self) -> nn.Module:
        """Return the EMA generator (what generator.pt holds)."""
        return self.game.ema

    def step(self, student: nn.Module) -> tuple[dict[str, float], Pair]:
        """Take one step of the generator game."""
        return self.game.step(student)

    def state_dict(self) -> dict:
        """Return the game's state."""
        return self.game.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the game's state."""
        self.game.load_state_dict(state)


class GeneratorSource(GamePlayer):
    """``--mode generator``: the game's samples alone; the game feeds the buffer, refills only start a stage."""

    refills = False

    def __init__(self, game: GeneratorGame):
        self.game = game

    def refill(self, n: int) -> Pair:
        """Return ``n`` labelled samples of the EMA generator."""
        x = self.game.sample(n)
        return x, self.game.label(x)
