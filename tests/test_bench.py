"""Benchmark scripts run end to end at a tiny size and report complete figures (not speed)."""
import json

import pytest

from bench import optimizations, overhead, throughput


def test_throughput_reports_both_pipelines(tmp_path):
    out = tmp_path / "tp.json"
    rows = throughput.main(["--models", "resnet8", "--batch_size", "8", "--steps", "1", "--warmup", "1",
                            "--repeats", "1", "--workers", "0", "--json", str(out)])
    assert rows[0]["tensor"] > 0 and rows[0]["pil"] > 0
    saved = json.loads(out.read_text())
    assert set(saved["augment"]) == {"engine gather crop/flip", "kornia RandomCrop/Flip"} and "versions" in saved


def test_overhead_reports_a_ratio_per_job(tmp_path):
    rows = overhead.main(["--teacher", "resnet8", "--student", "resnet8", "--batch", "8", "--steps", "2",
                          "--warmup", "1", "--repeats", "1", "--syn_batch", "4", "--ngf", "8", "--kd_steps", "2",
                          "--g_steps", "1", "--n_neg", "16",
                          "--json", str(tmp_path / "o.json")])
    jobs = [r["job"].split(" (")[0] for r in rows]
    assert jobs == ["teacher step", "kd step"] + [f"{m} round" for m in overhead.ROUND_SETTINGS] + ["fast_meta epoch"]
    assert all(r["ratio"] > 0 and r["bare_ms_per_step"] > 0 for r in rows)
    saved = json.loads((tmp_path / "o.json").read_text())
    assert len(saved["rows"]) == len(rows) and "versions" in saved


def test_overhead_rejects_unknown_jobs():
    with pytest.raises(SystemExit, match="valid: teacher kd fast_meta"):
        overhead.main(["--jobs", "kd", "warp"])


def test_optimizations_report_before_and_after(tmp_path):
    rows = optimizations.main(["--teacher", "resnet8", "--student", "resnet8", "--batch", "8", "--syn_batch", "4",
                               "--steps", "1", "--repeats", "1", "--no_compile", "--json", str(tmp_path / "x.json")])
    names = " ".join(r["optimisation"] for r in rows)
    for part in ("SGD", "Adam", "hooks off", "G' per round", "RandomResizedCrop"):
        assert part in names
    assert all(r["before_ms"] > 0 and r["after_ms"] > 0 and r["speedup"] > 0 for r in rows)
    assert json.loads((tmp_path / "x.json").read_text())["timing"].startswith("device-synchronised")


def test_pool_bench_fills_each_tier(tmp_path):
    from bench import pool as bench_pool

    out = bench_pool.main(["--n", "600", "--batch", "16", "--batches", "2", "--spill_dir", str(tmp_path),
                           "--json", str(tmp_path / "pool.json")])
    held = {r["tier"]: r["held"] for r in out["rows"]}
    assert held["device"] == {"device": 600, "host": 0, "disk": 0}
    assert held["host"] == {"device": 0, "host": 600, "disk": 0}
    assert held["disk"] == {"device": 0, "host": 0, "disk": 600}
    assert all(r["sample_ms_per_batch"] > 0 for r in out["rows"])
    assert json.loads((tmp_path / "pool.json").read_text())["n"] == 600


def test_memory_bench_reports_a_peak_per_synthesizer_and_kd_method(tmp_path, capsys):
    from bench import memory

    out = tmp_path / "memory.json"
    rows = memory.main(["--synth", "fast", "--kd", "kd", "--batch", "8", "--rounds", "1", "--g_steps", "1",
                        "--teacher", "resnet8", "--student", "resnet8", "--kd_batch", "4", "--steps", "1",
                        "--device", "cpu", "--json", str(out)])
    assert [(r["kind"], r["name"]) for r in rows] == [("synthesizer", "fast"), ("kd", "kd")]
    assert all(r["peak_mb"] > 50 and 0 <= r["work_mb"] < r["peak_mb"] for r in rows)  # a real process's figures
    table = capsys.readouterr().out
    assert "| synthesizer | fast |" in table and "| kd | kd | resnet8 -> resnet8, batch 4 |" in table
    import json

    assert len(json.loads(out.read_text())["rows"]) == 2


def test_scaling_bench_compares_one_process_with_torchrun(tmp_path, capsys):
    from bench import scaling

    rows = scaling.main(["--nproc", "2", "--steps", "2", "--epochs", "2", "--batch", "8", "--json",
                         str(tmp_path / "s.json")])
    assert [(r["job"], r["nproc"]) for r in rows] == [("kd", 1), ("kd", 2), ("datafree", 1), ("datafree", 2)]
    for one, two in (rows[:2], rows[2:]):
        assert one["speedup"] == 1.0 and two["images_per_s"] > 0
        assert two["images"] == 2 * one["images"]  # 2 processes of batch 8 take twice the images a step
    assert rows[3]["synthesis_s"] > 0
    out = capsys.readouterr().out
    assert "| KD | 2 | 1 |" in out and "| data-free epoch (fast_meta, synthesis included) | 2 | 1 |" in out
