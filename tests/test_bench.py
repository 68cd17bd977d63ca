"""Benchmark scripts run end to end at a tiny size and report complete figures (not speed)."""
import json

from bench import overhead, throughput


def test_throughput_reports_both_pipelines(tmp_path):
    out = tmp_path / "tp.json"
    rows = throughput.main(["--models", "resnet8", "--batch_size", "8", "--steps", "1", "--warmup", "1",
                            "--repeats", "1", "--workers", "0", "--json", str(out)])
    assert rows[0]["tensor"] > 0 and rows[0]["pil"] > 0
    saved = json.loads(out.read_text())
    assert set(saved["augment"]) == {"engine gather crop/flip", "kornia RandomCrop/Flip"} and "versions" in saved


def test_overhead_reports_a_ratio_per_job(tmp_path):
    rows = overhead.main(["--teacher", "resnet8", "--student", "resnet8", "--batch", "8", "--steps", "2",
                          "--warmup", "1", "--repeats", "1", "--syn_batch", "4", "--g_steps", "1",
                          "--json", str(tmp_path / "o.json")])
    assert [r["job"] for r in rows][:2] == ["teacher step", "kd step"]
    assert rows[2]["job"].startswith("fast_meta round") and len(rows) == 3
    assert all(r["ratio"] > 0 and r["bare_ms_per_step"] > 0 for r in rows)
