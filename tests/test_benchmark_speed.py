"""The speed benchmark's table and its section of docs/benchmarks.md (the benchmark itself is not run here)."""

from argparse import Namespace

from helpers import load_script


def _row(method, size, guard, fps, **kw):
    return {"method": method, "size": size, "guard": guard, "device": "cpu", "frames": 8, "fps": fps,
            "io_share": 0.04, "io_cpu_share": 0.031, "cpu_util": 0.9, "peak_rss_mb": 700 if guard else 650,
            "peak_gpu_mb": None, "setup_s": 1.0, "load": 2.0} | kw


def test_table_pairs_guard_settings_and_gives_the_guards_share():
    speed = load_script("benchmark_speed")
    rows = [_row("dtb", "1920x1080", True, 0.5, cpu="AMD EPYC (AVX512-BF16)"), _row("dtb", "1920x1080", False, 1.0),
            _row("transfer", "640x480", True, 3.0), _row("transfer", "1920x1080", False, 2.0)]
    lines = speed.table(rows)
    assert [line.split(" | ")[:2] for line in lines[2:]] == [["| transfer", "640x480"], ["| transfer", "1920x1080"],
                                                             ["| dtb", "1920x1080"]]
    dtb = lines[4].split(" | ")
    assert dtb[4:7] == ["0.50", "1.00", "50%"] and dtb[7:10] == ["4%", "3.1%", "90%"] and dtb[10] == "700"
    assert lines[2].split(" | ")[4:7] == ["3.00", "-", "-"]  # one setting only: no share
    assert lines[4].endswith("| AMD EPYC (AVX512-BF16) |") and lines[2].endswith("| - |")  # which CPU, if recorded


def test_the_generated_section_is_replaced_and_kept_by_benchmark_py(tmp_path):
    speed = load_script("benchmark_speed")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nquality table\n")
    speed.write_docs(doc, speed.section([_row("dtb", "640x480", True, 1.5)], {"fit_steps": 5}))
    speed.write_docs(doc, speed.section([_row("dtb", "640x480", True, 2.5)], {"fit_steps": 5}))
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nquality table\n") and text.count(speed.START) == 1
    assert "| 2.50 |" in text and "| 1.50 |" not in text

    bench = load_script("benchmark")
    args = Namespace(photos=["coffee"], seeds=[0], frames=8, size="64x48", motion="shake")
    bench.write_markdown(doc, [], {}, args, [])  # rewrites the quality part, keeps the speed section
    text = doc.read_text()
    assert "quality table" not in text and text.startswith("# Benchmarks")
    assert text.count(speed.START) == 1 and text.count(speed.END) == 1 and "| 2.50 |" in text
