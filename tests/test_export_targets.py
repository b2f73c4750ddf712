"""The export target registry (issue 19, item 2): one record per target, read by options, graph checks, bench,
demo and the CLI."""

from __future__ import annotations

import dataclasses

import pytest

from sr_shrink.bench import artifacts
from sr_shrink.cli import main
from sr_shrink.demo import demo_targets
from sr_shrink.errors import SRShrinkError
from sr_shrink.export import GraphInfo, check_graph, options, targets
from sr_shrink.export.options import ExportConfig
from sr_shrink.runtimes import RUNTIMES


def test_registry_refuses_a_second_record_under_one_name():
    before = dict(targets.TARGETS)
    with pytest.raises(ValueError, match="registered twice"):
        targets.register(dataclasses.replace(targets.TARGETS["onnx"], suffix=".other"))
    assert targets.TARGETS == before


def test_old_tables_are_views_of_the_registry():
    reg = targets.TARGETS
    assert tuple(reg) == options.TARGETS == ("onnx", "coreml", "tflite")
    assert options.SUFFIX == {"onnx": ".onnx", "coreml": ".mlpackage", "tflite": ".tflite"}
    assert options.DEFAULT_PRECISION == {"onnx": "fp32", "coreml": "fp16", "tflite": "fp32"}
    assert options.DEFAULT_LAYOUT == {"onnx": "nchw", "coreml": "nchw", "tflite": "nhwc"}
    assert artifacts.TARGETS == {"onnxruntime": "onnx", "litert": "tflite"}
    assert list(demo_targets()) == ["onnx", "tflite", "coreml"]
    for t in reg.values():  # the runner that opens a target's files is picked by the same suffix
        assert RUNTIMES[t.runtime].suffix == t.suffix


def test_cli_target_choices_match_the_registry():
    export = main.commands["export"]
    choices = next(p.type.choices for p in export.params if p.name == "target")
    assert tuple(choices) == tuple(targets.TARGETS)
    precision = next(p.type.choices for p in export.params if p.name == "precision")
    assert tuple(precision) == options.PRECISIONS


def test_record_fields_drive_config_and_graph_checks(monkeypatch):
    assert ExportConfig("onnx", precision="int8").calibrated
    assert not ExportConfig("coreml", precision="int8").calibrated
    with pytest.raises(SRShrinkError, match="--shapes applies to Core ML only"):
        ExportConfig("onnx", shapes="256x256,512x512")
    onnx = targets.TARGETS["onnx"]
    monkeypatch.setitem(targets.TARGETS, "onnx", dataclasses.replace(
        onnx, options=onnx.options | {"shapes"}, quantizes_activations=False))
    assert ExportConfig("onnx", shapes="256x256,512x512").shapes == ((256, 256), (512, 512))
    assert not ExportConfig("onnx", precision="int8").calibrated
    monkeypatch.setitem(targets.TARGETS, "onnx", dataclasses.replace(onnx, fixed_size=(64, 32)))
    assert ExportConfig("onnx").input_size == (64, 32)
    graph = GraphInfo(ops={"Conv": 1, "DepthToSpace": 1}, max_rank=4)
    assert check_graph("onnx", graph)["ops_allowed"]
    monkeypatch.setitem(targets.TARGETS, "onnx", dataclasses.replace(onnx, allowed_ops=frozenset({"Conv"})))
    with pytest.raises(SRShrinkError, match="DepthToSpace"):
        check_graph("onnx", graph)
