"""The KD zoo's benchmark, protocol and sweep script: they run and report what they claim."""
import json
import os
import shlex
import subprocess

import pytest

from bench import kd as bench_kd
from kd import train as kdtrain
from kd.distillers import list_distillers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_kd_reports_both_sides_and_their_ratio(tmp_path):
    out = tmp_path / "kd.json"
    payload = bench_kd.main(["--methods", "kd", "at", "dml", "--teacher", "resnet8", "--student", "resnet8",
                             "--batch", "8", "--steps", "2", "--warmup", "1", "--repeats", "1",
                             "--num_classes", "10", "--json", str(out)])
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == {"kd", "attention", "dml"}
    for r in rows.values():
        assert r["bare_ms"] > 0 and r["engine_ms"] > 0
        assert r["ratio"] == pytest.approx(r["engine_ms"] / r["bare_ms"], rel=1e-6)
    assert rows["dml"]["own_step"] and not rows["attention"]["own_step"]
    saved = json.loads(out.read_text())
    assert saved["versions"]["torch"] and len(saved["rows"]) == 3


def test_bench_kd_bare_step_computes_the_engines_loss():
    """The bare loop's hand-written hooks and loss sum give the engine's loss value."""
    import torch

    from kd.distillers import DataInfo

    info = DataInfo(num_classes=10, in_chans=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, num_samples=32,
                    labels=torch.arange(32) % 10)
    with_bare = bench_kd.make_distiller("attention", "resnet8", "resnet8", info, torch.device("cpu"), "")
    engine = bench_kd.make_distiller("attention", "resnet8", "resnet8", info, torch.device("cpu"), "")
    batch = bench_kd.make_batches(info, 4, 1, torch.device("cpu"), False)[0]
    losses = engine(batch)
    expected = sum(v * engine.loss_weight(k) for k, v in losses.items())
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            return None

    opt = Spy(list(with_bare.trainable_parameters()), lr=0.0)
    step = bench_kd.bare_step_fn(with_bare, opt)
    orig = torch.Tensor.backward

    def capture(self, *a, **kw):
        seen.append(self.detach().clone())
        return orig(self, *a, **kw)

    torch.Tensor.backward = capture
    try:
        step(batch)
    finally:
        torch.Tensor.backward = orig
    assert seen and seen[0].item() == pytest.approx(expected.item(), rel=1e-5)


def _script_commands(env_extra):
    env = {**os.environ, "DRY_RUN": "1", **env_extra}
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "train_distill.sh")], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [shlex.split(line[len("+ python kd/train.py "):]) for line in out.splitlines() if line.startswith("+ ")]


def test_train_distill_script_covers_every_method_and_every_command_parses():
    commands = _script_commands({})
    methods = set()
    for argv in commands:
        args = kdtrain.parse_args(argv)  # validates names, flags, options; nothing is run
        methods.update(args.methods)
    assert set(list_distillers()) - {"multiteacher"} <= methods | {"multiteacher"}
    assert set(list_distillers()) <= methods | {"nokd"} and "takd" in methods
    pairs = {(a[a.index("--path_t") + 1].split("/")[-2], a[a.index("--model_s") + 1]) for a in commands
             if "--path_t" in a}
    assert pairs == {("wrn_40_2_vanilla", "wrn_16_2"), ("resnet32x4_vanilla", "resnet8x4")}
    dkd = [a for a in commands if a[a.index("--distill") + 1] == "dkd"]
    assert sorted(a[a.index("--dkd_beta") + 1] for a in dkd) == ["6", "8"]  # mdistiller's per-pair beta


@pytest.mark.usefixtures("shared_data")
def test_kd_mnist_protocol_smoke_writes_table_plot_and_json(tmp_path, shared_data):
    from bench import reproduce

    import torch

    from registry.models import get_model

    teacher = tmp_path / "mnist_resnet20.pth"  # an untrained teacher: the protocol's machinery is under test
    torch.save(get_model("resnet20", num_classes=10, in_chans=1).state_dict(), teacher)
    out = tmp_path / "kd_mnist"
    result = reproduce.main(["--protocol", "kd_mnist", "--methods", "at", "nokd", "--epochs", "1",
                             "--steps", "2", "--batch", "32", "--out", str(out), "--data_root", shared_data,
                             "--device", "cpu", "--teacher_ckpt", str(teacher)])
    assert [m["method"] for m in result["medians"]] == ["attention", "nokd"]
    assert all(m["last_top1"] is not None for m in result["medians"])
    table = (out / "table.md").read_text()
    assert "| attention |" in table and "r 1 a 0 b 1000" in table
    assert (out / "plot.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["versions"]["torch"] and saved["teacher"]["arch"] == "resnet20"
    assert all("--steps_per_epoch" in r["argv"] for r in saved["runs"])
