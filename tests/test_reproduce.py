"""The reproduction protocols' machinery on a tiny budget (complete table, plot and JSON), their
settings against the repo's shell scripts, and the argument checks."""
import argparse
import json
import os
import re
import statistics

import pytest

from bench import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def table_rows(text):
    """Body rows of the first markdown table in ``text``, as lists of cells (header first)."""
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows]


def seconds(cell):
    """A table time ('12.3 s', '4.5 min', '1.25 h') in seconds."""
    value, unit = cell.split()
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


def test_mnist_protocol_tiny_budget_writes_table_plot_and_json(tmp_path, shared_data, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no teacher under ./run/teachers is picked up
    out = tmp_path / "mnist"
    res = reproduce.main(["--protocol", "mnist", "--data_root", shared_data, "--out", str(out),
                          "--epochs", "2", "--steps", "4", "--batch", "32", "--g_scale", "0.01"])
    methods = list(reproduce.MNIST_METHODS)
    assert [r["method"] for r in res["runs"]] == methods
    rows = table_rows((out / "table.md").read_text())
    assert rows[1][0] == "teacher" and len(rows) == 2 + len(methods)
    deepinv = next(r for r in rows if r[0].startswith("DeepInv"))
    assert deepinv[-1] == "1.0x"  # speed-ups are relative to DeepInversion
    for r in res["runs"]:
        assert 0 <= r["last_top1"] <= 100 and r["time_total"] > 0 and r["time_wall"] >= r["time_total"]
        assert (r["time_synthesis"] > 0) == (r["method"] not in reproduce.REFERENCES)
    png = (out / "plot.png").read_bytes()
    assert png[:8] == PNG and len(png) > 10_000
    saved = json.loads((out / "results.json").read_text())
    teacher = saved["teachers"]["lenet5_bn:lenet5_half_bn"]
    assert teacher["top1"] > 90 and "versions" in saved and saved["budget"]["steps"] == 4


def test_cifar10_protocol_on_digits_repeats_report_medians(tmp_path, monkeypatch):
    """--protocol cifar10 --dataset digits, one pair, a Fast-k variant, DeepInversion and KD on
    real data, two seeds each; the teacher is trained here by the budget-scaled teacher path.
    The pair is the --pair escape hatch (ResNet-8 teacher): the protocol's WRN-40-2 alone needs
    about 30 s per epoch of digits on 2 CPU cores."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "c10"
    argv = ["--protocol", "cifar10", "--dataset", "digits", "--pair", "resnet8:wrn16_1", "--methods", "fast2",
            "deepinv", "kd_real", "--budget", "0.02", "--g_scale", "0.25", "--epochs", "2", "--warmup", "1",
            "--steps", "2", "--batch", "16", "--repeats", "2", "--device", "cpu", "--out", str(out)]
    reproduce.main(argv)
    keys, pair = ["kd_real", "deepinv", "fast2"], "resnet8:wrn16_1"
    saved = json.loads((out / "results.json").read_text())
    assert saved["dataset"] == "digits" and saved["seeds"] == [0, 1]
    assert sorted((r["method"], r["seed"]) for r in saved["runs"]) == sorted((k, s) for k in keys for s in (0, 1))
    # budget: teacher 240 x 0.02 epochs, DeepInv-1k at 1000 x 0.02 x 0.25 g_steps; --epochs/--warmup win
    teacher = saved["teachers"][pair]
    assert "--epochs 5" in teacher["source"] and 0 <= teacher["top1"] <= 100
    runs = {(r["method"], r["seed"]): r for r in saved["runs"]}
    assert runs[("deepinv", 0)]["label"] == "DeepInv-1k [g_steps 5]"
    fast_argv = runs[("fast2", 0)]["argv"]
    assert fast_argv[fast_argv.index("--epochs") + 1] == "2" and fast_argv[fast_argv.index("--warmup") + 1] == "1"
    di_argv = runs[("deepinv", 1)]["argv"]
    assert di_argv[di_argv.index("--epochs") + 1] == "1" and di_argv[di_argv.index("--seed") + 1] == "1"

    text = (out / "table.md").read_text()
    assert "dataset `digits`" in text and "median over 2 seed(s)" in text and "Timing:" in text
    rows = table_rows(text)
    assert rows[0] == ["method", "resnet8→wrn16_1 acc.", "resnet8→wrn16_1 time", "speed-up vs DeepInv"]
    assert rows[1][0] == "teacher" and rows[1][1] == f"{teacher['top1']:.2f}"
    body = {r[0]: r for r in rows[2:]}
    assert len(body) == len(keys)
    for key in keys:
        mine = [r for r in saved["runs"] if r["method"] == key]
        med = next(s for s in saved["medians"] if s["method"] == key and s["pair"] == pair)
        cell = body[med["label"]]
        last, best = (statistics.median(r[k] for r in mine) for k in ("last_top1", "best_top1"))
        lo, hi = min(r["best_top1"] for r in mine), max(r["best_top1"] for r in mine)
        assert cell[1] == f"{last:.2f} ({best:.2f}) [{lo:.2f}-{hi:.2f}]"
        assert med["last_top1"] == pytest.approx(last) and med["n"] == 2
        for k in ("time_synthesis", "time_total"):
            assert med[k] == pytest.approx(statistics.median(r[k] for r in mine))
        syn, total = cell[2].split(" / ")
        assert seconds(total) == pytest.approx(med["time_total"], rel=0.05, abs=0.01)
        assert (syn == "-") == (key == "kd_real")
    assert body[runs[("deepinv", 0)]["label"]][-1] == "1.0x" and body["KD (real data)"][-1] == "-"
    speed = saved["median_speedup_vs_deepinv"]["fast2"]
    assert speed > 0 and body[runs[("fast2", 0)]["label"]][-1] == f"{speed:.1f}x"

    png = (out / "plot.png").read_bytes()
    assert png[:8] == PNG and len(png) > 10_000
    again = reproduce.main(["--reuse", *argv])  # finished runs with the same settings are read back
    assert all(r.get("reused") for r in again["runs"]) and (out / "table.md").read_text() == text
    assert {"torch", "machine", "python"} <= set(saved["versions"]) and saved["device"] == "cpu"
    assert "first epoch" in saved["timing"] and saved["args"]["repeats"] == 2 and "--repeats" in saved["argv"]


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(SystemExit, match=r"unknown pair.*'wrn40_2:resnet8'.*resnet34:resnet18.*wrn40_2:wrn16_1"):
        reproduce.main(["--protocol", "cifar10", "--pairs", "wrn40_2:resnet8", "--dry_run"])
    with pytest.raises(SystemExit, match=r"unknown method.*'fast3'.*deepinv.*fast10.*fast_meta"):
        reproduce.main(["--protocol", "cifar100", "--methods", "fast3", "--dry_run"])
    with pytest.raises(SystemExit, match=r"unknown method.*fast_meta, fast, deepinv"):
        reproduce.main(["--protocol", "mnist", "--methods", "bogus", "--dry_run"])
    with pytest.raises(SystemExit, match=r"unknown model 'wrn99'.*Valid names"):
        reproduce.main(["--protocol", "cifar10", "--pair", "wrn99:wrn16_1", "--dry_run"])
    with pytest.raises(SystemExit, match=r"unknown dataset 'cifar11'.*digits"):
        reproduce.main(["--protocol", "cifar10", "--dataset", "cifar11", "--dry_run"])
    for bad in (["--budget", "0"], ["--budget", "1.5"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            reproduce.main(["--protocol", "cifar10", "--dry_run", *bad])


def flags_of(tokens):
    """{flag: value} of the literal '--flag value' pairs of a command (shell variables skipped)."""
    out = {}
    for a, b in zip(tokens, tokens[1:]):
        if a.startswith("--") and not b.startswith(("--", "$", '"$')):
            out[a] = b
    return out


def same_value(a, b):
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def protocol_argv(key, pair, budget=1.0):
    ns = argparse.Namespace(budget=budget, g_scale=1.0, epochs=None, warmup=None, steps=None, batch=None,
                            data_root="D", download=False, device="auto", amp="auto")
    p = reproduce.PROTOCOLS["cifar100"]
    b = reproduce.resolve_budget(p, ns)
    return flags_of(reproduce.datafree_argv(p, key, pair, b, "cifar100", "T.pt", 0, "S", ns))


def test_cifar_protocol_and_scripts_read_the_recipe_files():
    """One copy of each published setting: recipes/*.yaml. The protocol's runs carry each recipe's
    values, and the shell scripts pass the same files with --config."""
    import yaml

    from engine.recipes import recipe_path
    from kd import faster_data_free_kd as dfkd

    fast = open(os.path.join(ROOT, "scripts", "fast_cifar.sh")).read()
    pairs = re.findall(r'^\s+"(\S+) (\S+) ([\d.]+) ([\d.]+) \S+"$', fast, re.M)
    assert [(q.teacher, q.student, q.adv, q.oh) for q in reproduce.CIFAR_PAIRS] == \
        [(t, s, float(a), float(o)) for t, s, a, o in pairs]
    steps = dict(re.findall(r'"(\d+) (recipes/\S+\.yaml)"', fast))
    assert set(steps) == {"2", "5", "10"}
    base = open(os.path.join(ROOT, "scripts", "baselines_cifar.sh")).read()
    assert 'recipe="recipes/${m}_cifar.yaml"' in base
    baselines = re.search(r'METHODS=\$\{METHODS:-"([^"]+)"\}', base).group(1).split()
    rows = {f"fast{g}": path for g, path in steps.items()}
    rows.update({m: f"recipes/{m}_cifar.yaml" for m in baselines})
    assert set(rows) == {k for k, m in reproduce.CIFAR_METHODS.items() if m.engine not in reproduce.REFERENCES}
    for key, path in rows.items():
        recipe = yaml.safe_load(open(recipe_path(os.path.join(ROOT, path))))
        for pair in reproduce.CIFAR_PAIRS:
            ours = protocol_argv(key, pair)
            want = {**recipe, **({"adv": pair.adv, "oh": pair.oh} if key.startswith("fast") else {})}
            for k, v in want.items():
                if k == "method":
                    assert ours["--method"] == v
                else:
                    assert same_value(ours[f"--{k}"], str(v)), (key, k, ours.get(f"--{k}"), v)
        # the script's command line, variables filled in, parses to the recipe's values
        line = (["--config", os.path.join(ROOT, path), "--teacher", "wrn40_2", "--student", "wrn16_1",
                 "--seed", "0", "--epochs", str(recipe["epochs"])]
                + (["--adv", "1.1", "--oh", "0.4", "--warmup", "20"] if key.startswith("fast") else []))
        args = dfkd.parse_args(line)
        for k, v in recipe.items():
            assert same_value(str(getattr(args, k)), str(v)), (key, k, getattr(args, k), v)


def test_budget_scales_epochs_teacher_and_g_steps():
    ns = argparse.Namespace(budget=0.1, g_scale=1.0, epochs=None, warmup=None, steps=None, batch=None,
                            data_root="D", download=False, device="cpu", amp="off", seed=0)
    p = reproduce.PROTOCOLS["cifar10"]
    b = reproduce.resolve_budget(p, ns)
    assert (b["epochs"], b["warmup"], b["kd_epochs"], b["batch"]) == (22, 2, 20, 256)
    pair = p.pairs[0]
    assert protocol_argv("deepinv", pair, 0.1)["--g_steps"] == "100"
    assert protocol_argv("fast2", pair, 0.1)["--g_steps"] == "1"  # at least 1
    argv = reproduce.teacher_argv(p, "wrn40_2", "cifar10", 0.1, "S", ns)
    assert argv[argv.index("--epochs") + 1] == "24"
    assert argv[argv.index("--milestones") + 1:argv.index("--milestones") + 4] == ["15", "18", "21"]
    tiny = reproduce.resolve_budget(p, argparse.Namespace(**{**vars(ns), "budget": 0.001}))
    assert tiny["kd_epochs"] >= 1  # at least one KD epoch stays
    # --steps keeps a pool method's rounds per epoch and a generative method's KD steps per G step
    assert reproduce.kd_schedule(p.methods["fast5"], 8) == (8, 8)
    assert reproduce.kd_schedule(p.methods["dfq"], 8) == (8, 8)
    assert reproduce.kd_schedule(p.methods["dafl"], 40) == (5, 40)
    assert reproduce.kd_schedule(reproduce.MNIST_METHODS["cmi"], 4) == (2, 4)


def test_table_and_plot_for_several_pairs(tmp_path):
    """Medians over seeds per pair, speed-up median over pairs, a panel per pair."""
    pairs = reproduce.CIFAR_PAIRS[2:4]
    runs = []
    for i, q in enumerate(pairs):
        for key, syn in (("deepinv", 100.0 * (i + 1)), ("fast5", 2.0), ("kd_real", 0.0)):
            for seed, acc in enumerate((60.0, 70.0, 65.0)):
                runs.append({"pair": q.name, "method": key, "label": reproduce.CIFAR_METHODS[key].label,
                             "seed": seed, "error": None, "last_top1": acc, "best_top1": acc + 1,
                             "time_synthesis": syn + seed, "time_total": syn + 10 + seed, "time_wall": syn + 20})
    keys = ["kd_real", "deepinv", "fast5"]
    summary = reproduce.summarise(runs, pairs, keys)
    fast = [s for s in summary if s["method"] == "fast5"]
    assert [s["time_synthesis"] for s in fast] == [3.0, 3.0]
    assert [s["speedup_vs_deepinv"] for s in fast] == [pytest.approx(101 / 3), pytest.approx(201 / 3)]
    assert reproduce.median_speedup(summary, "fast5") == pytest.approx(151 / 3)
    top1 = {q.name: 75.0 for q in pairs}
    rows = table_rows("\n".join(reproduce.render_table(summary, pairs, keys, top1, 3)))
    assert len(rows[0]) == 1 + 2 * len(pairs) + 1 and [r[0] for r in rows[2:]] == ["KD (real data)", "DeepInv-1k",
                                                                                  "Fast-5"]
    assert rows[-1][1] == "65.00 (66.00) [61.00-71.00]" and rows[-1][-1] == "50.3x"
    reproduce.write_plot(str(tmp_path / "p.png"), summary, pairs, keys, top1, "t")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG
