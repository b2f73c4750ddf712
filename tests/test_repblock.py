"""Re-parameterizable student blocks: ``SRStudent(block="rep")`` collapses exactly into the plain student.

Exactness is checked against a float64 evaluation of the branch-wise definition (``RepConv.branches``), so a
collapse formula that drops or mis-places a branch fails it (negative controls below). A short rep distill
run checks every stage checkpoint against the training form it was collapsed from, that the next stage grows
from the training form, that kill/resume stays bit-exact, and that its exports hold only the plain graph.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST_EXPORT, make_tiny_run

from sr_shrink.distill import Callbacks, DistillConfig, distill
from sr_shrink.errors import SRShrinkError
from sr_shrink.models.student import RepConv, SRStudent, collapse, grow, load_student, to_rep
from sr_shrink.teachers import count_macs

TOL = 1e-5


def _randomize(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (also the zero-initialised ones) random values of a realistic size."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _reference(student: SRStudent, x: torch.Tensor) -> torch.Tensor:
    """The rep student's output computed branch by branch (the definition), in float64."""
    s, x = copy.deepcopy(student).double(), x.double()
    feat = s.head(x)
    for blk in s.body:
        feat = feat + blk.conv2.branches(F.relu(blk.conv1.branches(feat)))
    out = s.tail(feat) + x.repeat_interleave(s.scale * s.scale, dim=1)
    return F.pixel_shuffle(out, s.scale)


@torch.no_grad()
def _max_err(plain: SRStudent, rep: SRStudent, seed: int = 1) -> float:
    x = torch.rand(2, 3, 19, 23, generator=torch.Generator().manual_seed(seed))
    return (plain(x).double() - _reference(rep, x)).abs().max().item()


@pytest.mark.parametrize("scale,n_blocks,channels", [(2, 1, 4), (3, 2, 8), (4, 4, 16)])
def test_collapse_is_exact_on_random_weights(scale, n_blocks, channels):
    rep = _randomize(SRStudent(scale, n_blocks, channels, block="rep")).eval()
    plain = collapse(rep)
    assert plain.block == "plain" and plain.config() == {**rep.config(), "block": "plain"}
    assert set(plain.state_dict()) == set(SRStudent(scale, n_blocks, channels).state_dict())
    assert not any(isinstance(m, RepConv) for m in plain.modules())
    err = _max_err(plain, rep)
    assert err <= TOL, err
    # the training forward (one conv with the online-fused kernel) is the same function as the branches
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        assert (rep(x).double() - _reference(rep, x)).abs().max().item() <= TOL


@pytest.mark.parametrize("drop", ["conv1x1", "identity_scale", "squeeze", "conv3x3"])
def test_negative_control_a_collapse_missing_a_branch_is_not_exact(drop):
    # a collapse that forgets one branch (here: that branch zeroed before collapsing) must fail the check above
    rep = _randomize(SRStudent(2, 2, 8, block="rep")).eval()
    wrong = copy.deepcopy(rep)
    with torch.no_grad():
        for blk in wrong.body:
            for conv in (blk.conv1, blk.conv2):
                for p in getattr(conv, drop).parameters() if drop != "identity_scale" else [conv.identity_scale]:
                    p.zero_()
    assert _max_err(collapse(rep), rep) <= TOL
    assert _max_err(collapse(wrong), rep) > 100 * TOL


def test_negative_control_a_biased_expand_conv_cannot_collapse_exactly():
    # why the expand conv has no bias: with one, the zero padding of the squeeze conv breaks the formula at the
    # border (the interior still matches), so a collapse that folds the bias through would not be exact
    conv = _randomize(RepConv(4), std=0.3)
    biased = torch.nn.Conv2d(4, 8, 1)
    with torch.no_grad():
        biased.weight.copy_(conv.expand.weight)
        biased.bias.copy_(torch.randn(8) * 0.3)
        x = torch.rand(1, 4, 9, 9)
        truth = conv.squeeze(biased(x))
        w = torch.einsum("oekl,ei->oikl", conv.squeeze.weight, conv.expand.weight[:, :, 0, 0])
        b = conv.squeeze.bias + torch.einsum("oekl,e->o", conv.squeeze.weight, biased.bias)
        folded = F.conv2d(x, w, b, padding=1)
    diff = (truth - folded).abs()
    assert diff[..., 1:-1, 1:-1].max() <= TOL and diff.max() > 100 * TOL


@pytest.mark.parametrize("scale", [2, 3])
def test_grow_rep_preserves_output_and_the_new_block_learns(scale):
    rep = _randomize(SRStudent(scale, 2, 8, block="rep"))
    x = torch.rand(2, 3, 10, 12)
    g = grow(rep, torch.Generator().manual_seed(1))
    assert g.block == "rep" and g.n_blocks == 3 and isinstance(g.body[-1].conv2, RepConv)
    assert torch.equal(g(x), rep(x))
    g2 = grow(g)
    assert torch.equal(g2(x), rep(x))
    assert _max_err(collapse(g2), g2) <= TOL
    # seeded: the same generator seed gives the same new block, another seed another one
    again = grow(rep, torch.Generator().manual_seed(1))
    other = grow(rep, torch.Generator().manual_seed(2))
    w = lambda m: m.body[-1].conv1.kernel()[0]  # noqa: E731
    assert torch.equal(w(g), w(again)) and not torch.equal(w(g), w(other))
    # not dead: every branch of the new block's zeroed output conv gets a gradient at once
    g(x).sum().backward()
    last = g.body[-1].conv2
    for p in (last.conv3x3.weight, last.conv1x1.weight, last.identity_scale, last.squeeze.weight):
        assert p.grad.abs().sum() > 0


def test_fresh_rep_student_starts_as_nearest_upsampling():
    s = SRStudent(3, 2, 4, block="rep")
    x = torch.rand(1, 3, 5, 5)
    assert torch.allclose(s(x), F.interpolate(x, scale_factor=3, mode="nearest"))


def test_collapsed_student_has_the_plain_parameter_count_and_macs():
    rep = _randomize(SRStudent(2, 4, 16, block="rep"))
    plain, ref = collapse(rep), SRStudent(2, 4, 16)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(plain) == n(ref) < n(rep)
    assert count_macs(plain) == count_macs(ref) > 0


def test_to_rep_is_exact_and_trainable():
    plain = _randomize(SRStudent(2, 2, 8))
    rep = to_rep(plain)
    assert rep.block == "rep"
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert (rep(x) - plain(x)).abs().max().item() <= TOL
        assert (_reference(rep, x) - plain(x).double()).abs().max().item() <= TOL
    rep(x).sum().backward()
    assert rep.body[0].conv1.squeeze.weight.grad.abs().sum() > 0


def test_bad_block_is_refused():
    with pytest.raises(ValueError, match="block must be one of plain, rep"):
        SRStudent(2, 1, 4, block="repvgg")
    with pytest.raises(SRShrinkError, match="--block 'x': choose plain or rep"):
        DistillConfig(block="x").validate()


# ---------------------------------------------------------------- a short rep distill run


def _cfg(**kw) -> DistillConfig:
    base = dict(stage_start=1, stage_end=3, steps_per_stage=8, channels=4, batch=4, lr_patch=12, save_every=3,
                mode="datafree", student_steps_per_g=3, seed=5, block="rep")
    return DistillConfig(**{**base, **kw})


def _distill(teacher, out: Path, callbacks: Callbacks | None = None, **kw) -> dict:
    return distill(str(teacher), out, _cfg(**kw), eval_dir="none", quiet=True, device="cpu", callbacks=callbacks)


@pytest.fixture(scope="module")
def rep_run(tmp_path_factory):
    """A 3-stage rep run; returns (run dir, training forms at each stage end, students each stage started from)."""
    from conftest import make_tiny_teacher

    root = tmp_path_factory.mktemp("rep")
    teacher = make_tiny_teacher(root / "teacher.pt")
    ends, starts = [], []
    watch = Callbacks(stage_start=lambda idx, student, state: starts.append(copy.deepcopy(student).cpu()),
                      stage_end=lambda idx, student: ends.append(copy.deepcopy(student).cpu()))
    _distill(teacher, root / "run", watch)
    return root / "run", ends, starts, teacher


def test_rep_run_every_stage_checkpoint_is_the_exact_collapse(rep_run):
    run_dir, ends, starts, _ = rep_run
    run = json.loads((run_dir / "run.json").read_text())
    assert run["complete"] and run["recipe"]["block"] == "rep" and len(ends) == 3
    for i, (entry, trained) in enumerate(zip(run["stages"], ends), start=1):
        shipped, ckpt = load_student(run_dir / f"stage_{i:02d}.pt")
        assert trained.block == "rep" and shipped.block == "plain" and ckpt["config"]["block"] == "plain"
        assert ckpt["train_block"] == "rep" and shipped.n_blocks == entry["n_blocks"] == i
        assert entry["params"] == sum(p.numel() for p in SRStudent(2, i, 4).parameters()) < entry["train_params"]
        err = _max_err(shipped, trained.eval())
        assert err <= TOL, (i, err)
        assert any(b.conv2.kernel()[0].abs().sum() > 0 for b in trained.body)  # it trained: not a trivial zero


def test_rep_run_next_stage_grows_from_the_training_form(rep_run):
    _, ends, starts, _ = rep_run
    for k in range(1, 3):  # stage k+1 starts from stage k's training form plus one block, not from its collapse
        start, end = starts[k].state_dict(), ends[k - 1].state_dict()
        assert starts[k].block == "rep" and starts[k].n_blocks == k + 1
        assert all(torch.equal(start[key], end[key]) for key in end)


def test_rep_run_onnx_export_holds_only_the_plain_graph(rep_run, tmp_path):
    from sr_shrink.export import export_run

    run_dir = rep_run[0]
    (e,) = export_run(run_dir, "onnx", stage=3, precision="fp32", out=tmp_path / "rep", **FAST_EXPORT)
    plain_dir = make_tiny_run(tmp_path / "plain", channels=4, n_stages=3)
    (ref,) = export_run(plain_dir, "onnx", stage=3, precision="fp32", out=tmp_path / "plain_exp", **FAST_EXPORT)
    assert e["verified"]
    assert set(e["ops"]) <= {"Conv", "Relu", "Add", "Clip", "DepthToSpace"}  # Clip: the output clamp
    assert e["ops"] == ref["ops"]  # node for node the plain student's graph
    import onnx

    def conv_weights(path) -> list[list[int]]:  # (a bias of zeros may be dropped by the exporter: weights only)
        g = onnx.load(path).graph
        dims = {t.name: list(t.dims) for t in g.initializer}
        return [dims.get(n.input[1]) for n in g.node if n.op_type == "Conv"]

    shapes = conv_weights(e["path"])
    assert shapes == conv_weights(ref["path"])  # conv for conv the plain student's weight shapes
    assert shapes.count([4, 4, 3, 3]) == 2 * 3  # one 3x3 conv per block conv, no branches left


class Killed(Exception):
    pass


def _kill_after(nth: int) -> Callbacks:
    """Return callbacks that stop the run (as if killed) right after its ``nth`` state.pt write."""
    calls = {"n": 0}

    def saved(idx, step):
        calls["n"] += 1
        if calls["n"] == nth:
            raise Killed

    return Callbacks(saved=saved)


def _weights(folder: Path) -> dict[str, dict]:
    return {p.name: torch.load(p, weights_only=True)["state_dict"] for p in sorted(folder.glob("stage_*.pt"))}


def _same(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    assert list(wa) == list(wb) == ["stage_01.pt", "stage_02.pt", "stage_03.pt"]
    return all(torch.equal(wa[n][k], wb[n][k]) for n in wa for k in wa[n])


# save_every 3, 8 steps: saves at steps 3 and 6 of each stage, then the end-of-stage save (next stage, step 0).
# nth 3: killed right after stage 1's end-of-stage save; nth 5: mid stage 2 (its step-6 save)
@pytest.mark.parametrize("nth", [3, 5])
def test_rep_kill_and_resume_is_bit_exact(rep_run, tmp_path, nth):
    run_dir, _, _, teacher = rep_run
    killed = tmp_path / "killed"
    with pytest.raises(Killed):
        _distill(teacher, killed, _kill_after(nth))
    state = torch.load(killed / "state.pt", weights_only=True)
    assert state["student_config"]["block"] == "rep" and state["stage_idx"] == 1
    assert state["step"] == (0 if nth == 3 else 6)
    assert not (killed / "stage_02.pt").exists()
    run = distill(str(teacher), killed, _cfg(), eval_dir="none", quiet=True, device="cpu", resume=True)
    assert run["complete"] and run["resumed_from"] == [{"stage": 2, "step": state["step"]}]
    assert _same(run_dir, killed)


def test_negative_control_resuming_from_the_collapsed_checkpoint_is_not_bit_exact(rep_run, tmp_path):
    # what the test above guards against: growing stage 2 from stage_01.pt (the collapse, re-expanded by to_rep)
    # instead of the training form in state.pt gives the same function but other weights and another training
    run_dir, _, _, teacher = rep_run
    killed = tmp_path / "killed"
    with pytest.raises(Killed):  # stage 2, step 3: run.json lists stage 1
        _distill(teacher, killed, _kill_after(4))
    (killed / "state.pt").unlink()
    run = distill(str(teacher), killed, _cfg(), eval_dir="none", quiet=True, device="cpu", resume=True)
    assert run["complete"] and run["resumed_from"] == [{"stage": 2, "step": 0, "from_collapsed": True}]
    assert not _same(run_dir, killed)
    # still exact collapses of a valid continuation: every checkpoint loads as a plain student
    assert all(load_student(killed / f"stage_{i:02d}.pt")[0].block == "plain" for i in (1, 2, 3))


def test_resume_refuses_another_block(rep_run, tmp_path):
    teacher = rep_run[3]
    _distill(teacher, tmp_path / "r", steps_per_stage=2)
    with pytest.raises(SRShrinkError, match="--block rep, not plain"):
        distill(str(teacher), tmp_path / "r", _cfg(steps_per_stage=2, block="plain"), eval_dir="none", quiet=True,
                device="cpu", resume=True)
