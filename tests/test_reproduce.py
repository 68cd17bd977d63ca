"""The reproduction protocol's machinery on a tiny budget: a complete table and plot."""
import json

from bench import reproduce


def test_mnist_protocol_tiny_budget_writes_table_plot_and_json(tmp_path, shared_data):
    out = tmp_path / "mnist"
    res = reproduce.main(["--protocol", "mnist", "--data_root", shared_data, "--out", str(out),
                          "--epochs", "2", "--steps", "4", "--batch", "32", "--g_scale", "0.01"])
    methods = list(reproduce.MNIST_METHODS) + list(reproduce.REFERENCES)
    assert [r["method"] for r in res["rows"]] == methods
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(methods)
    deepinv = next(line for line in rows if line.startswith("| DeepInv"))
    assert "1.0x" in deepinv  # speed-ups are relative to DeepInversion
    for r in res["rows"]:
        assert 0 <= r["last_top1"] <= 100 and r["time_total"] > 0
        assert (r["time_synthesis"] > 0) == (r["method"] not in reproduce.REFERENCES)
    png = (out / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    saved = json.loads((out / "results.json").read_text())
    assert saved["teacher_top1"] > 90 and "versions" in saved and saved["settings"]["steps"] == 4
