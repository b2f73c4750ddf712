"""A teacher a user brings, end to end: a random-weight Real-ESRGAN Compact x4 checkpoint (the layout of
realesr-animevideov3.pth) -> distill -> export ONNX int8 -> bench, with fidelity to the teacher recorded."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import make_tiny_eval
from zoo_checkpoints import compact

from sr_shrink.cli import main


def _ok(args: list[str]):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_compact_x4_distill_export_int8_bench(tmp_path):
    teacher = compact(tmp_path, scale=4).path
    eval_dir = make_tiny_eval(tmp_path / "eval", n=2, size=48)
    run = tmp_path / "run"
    _ok(["distill", str(teacher), "--out", str(run), "--stages", "1:2", "--steps-per-stage", "4", "--channels", "4",
         "--batch", "4", "--eval", str(eval_dir), "--quiet", "--threads", "1", "--device", "cpu"])
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["scale"] == 4 and run_json["teacher"]["arch"] == "Compact"
    assert run_json["config"]["lr_patch"] == 12  # the x4 default (BENCHMARKS section 17), not the x2 one
    for stage in run_json["stages"]:
        assert 5 < stage["fidelity_psnr_y"] < 99 and 0 < stage["fidelity_ssim_y"] <= 1
    _ok(["export", str(run), "--target", "onnx", "--precision", "int8", "--stage", "last", "--eval", str(eval_dir),
         "--calib-samples", "4"])
    _ok(["export", str(run), "--target", "tflite", "--precision", "int8", "--stage", "last", "--eval", str(eval_dir),
         "--calib-samples", "4", "--input-size", "16x16"])
    index = json.loads((run / "exports" / "export.json").read_text())
    assert [e["target"] for e in index["exports"]] == ["onnx", "tflite"]
    for entry in index["exports"]:  # x4 pixel shuffle stays rank 4 in both graphs, and both ran and were scored
        assert entry["scale"] == 4 and entry["graph_checks"]["max_rank"] <= 4, entry
        v = entry["verification"]  # (a 4-step, 4-channel student: its int8 loss is not what this test is about)
        assert v["tolerance_db"] == 0.3 and abs(v["delta_psnr_y"]) < 5 and v["images"] == 2, v
    _ok(["bench", str(run), "--runtimes", "torch,onnxruntime,litert", "--precisions", "int8", "--eval",
         str(eval_dir), "--input-size", "16x16", "--repeats", "2", "--warmup", "0", "--rounds", "1"])
    bench = json.loads((run / "bench.json").read_text())
    rows = bench["rows"]
    assert {(r["runtime"], r["precision"]) for r in rows} >= {("torch", "fp32"), ("onnxruntime", "int8"),
                                                               ("litert", "int8")}
    for r in rows:
        assert r["fidelity_psnr_y"] is not None and 5 < r["fidelity_psnr_y"] < 99
    torch_last = next(r for r in rows if r["runtime"] == "torch" and r["stage"] == 2)
    assert abs(torch_last["fidelity_psnr_y"] - run_json["stages"][-1]["fidelity_psnr_y"]) < 0.05
    assert bench["metric"]["name"] in ("psnr", "fidelity") and bench["metric"]["reason"]
    # the fixed-size x4 TFLite file upscales a whole 48 px image (tiled) to 192 px
    image = next(eval_dir.iterdir())
    tflite = next((run / "exports").glob("stage_02_int8.tflite"))
    _ok(["upscale", str(tflite), str(image), "-o", str(tmp_path / "up")])
    from PIL import Image

    with Image.open(tmp_path / "up" / f"{image.stem}_x4.png") as im:
        assert im.size == (192, 192)
