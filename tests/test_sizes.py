"""One size parser for bench and export: the same forms accepted, the same ones refused."""

import pytest

from sr_shrink.bench import parse_size as bench_parse
from sr_shrink.errors import SRShrinkError
from sr_shrink.export import ExportConfig
from sr_shrink.export import parse_size as export_parse
from sr_shrink.sizes import parse_size

GOOD = {"256x256": (256, 256), "256": (256, 256), "64x48": (64, 48), " 32 X 40 ": (32, 40), "16*24": (16, 24),
        (20, 30): (20, 30)}
BAD = ["big", "", "x", "12x", "x12", "1.5x2", "-8x8", "0x0", "2x2", "3", "9000x10", "256x256x3"]


@pytest.mark.parametrize("text", list(GOOD), ids=str)
def test_bench_and_export_accept_the_same_forms(text):
    want = GOOD[text]
    assert parse_size(text) == bench_parse(text) == export_parse(text) == want
    assert ExportConfig(target="onnx", input_size=text).input_size == want


@pytest.mark.parametrize("text", BAD)
def test_bench_and_export_refuse_the_same_forms(text):
    for parse in (parse_size, bench_parse, export_parse):
        with pytest.raises(SRShrinkError, match="--input-size"):
            parse(text)


def test_export_keeps_none_for_a_free_size():
    assert export_parse(None) is None
