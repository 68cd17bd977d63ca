"""Drop-in use: the ecosystem's checkpoint layouts, the seeds' command lines, defaults that
work, and bad input that fails with one line before anything is written (issue 10)."""
from __future__ import annotations

import argparse
import os
import stat
import sys
import types
import urllib.error

import numpy as np
import pytest
import torch

import cifar100
from engine.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from engine.logger import RunLogger
from engine.preflight import UsageError
from kd import faster_data_free_kd as dfkd
from registry import datasets as ds
from registry.models import get_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny():
    return get_model("resnet8", num_classes=10, in_chans=1)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture
def lightning_module(monkeypatch):
    """A class pickled under Lightning's AttributeDict name (Lightning is not installed here)."""
    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    mods = {n: types.ModuleType(n) for n in names}

    class AttributeDict(dict):
        def __getattr__(self, k):
            return self[k]

    AttributeDict.__module__, AttributeDict.__qualname__ = names[-1], "AttributeDict"
    mods[names[-1]].AttributeDict = AttributeDict
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    return AttributeDict


def layouts(sd, AttributeDict):
    """Each code base's saving layout, metadata types included."""
    return {
        # RepDistiller train_teacher.py: best and every-N checkpoints, and *_last.pth with the options
        "repdistiller_best": {"model": sd, "accuracy": torch.tensor(93.1), "epoch": 240},
        "repdistiller_last": {"epoch": 240, "model": sd, "accuracy": torch.tensor(93.1), "best_acc": torch.tensor(93.4),
                              "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0]}]},
                              "opt": argparse.Namespace(model="resnet8", learning_rate=0.05, lr_decay_epochs=[150, 180])},
        # mdistiller: teachers as RepDistiller's; its own student_best holds the student's weights
        "mdistiller": {"model": sd, "best_acc": 71.2, "epoch": 240},
        "mdistiller_distiller_state": {"model": {**{"student." + k: v for k, v in sd.items()},
                                                 **{"teacher." + k: v.clone() for k, v in sd.items()}},
                                       "optimizer": {}, "best_acc": 71.2, "epoch": 240},
        # Fast-Datafree (and the PyTorch ImageNet example it follows): DataParallel keys, numpy accuracy
        "fast_datafree": {"epoch": 200, "arch": "resnet8", "state_dict": {"module." + k: v for k, v in sd.items()},
                          "best_acc1": np.float64(94.7), "optimizer": {}, "scheduler": {}},
        # torchdistill: {'model', 'optimizer', 'lr_scheduler', 'best_value', 'args'}
        "torchdistill": {"model": sd, "optimizer": {}, "lr_scheduler": {}, "best_value": 0.71,
                         "args": argparse.Namespace(config="configs/kd.yaml", world_size=1)},
        # Lightning: the network under self.model, another module beside it, AttributeDict hparams
        "lightning": {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.4.0",
                      "state_dict": {**{"model." + k: v for k, v in sd.items()}, "criterion.weight": torch.ones(10)},
                      "hyper_parameters": AttributeDict(lr=0.1, arch="resnet8"), "optimizer_states": [], "callbacks": {}},
        "torch_compile": {"_orig_mod." + k: v for k, v in sd.items()},
        "dataparallel": {"module." + k: v for k, v in sd.items()},
        "dataparallel_compiled": {"module._orig_mod." + k: v for k, v in sd.items()},
    }


def test_every_ecosystem_layout_loads_into_the_registry_model(tmp_path, lightning_module):
    src = tiny()
    for name, obj in layouts(src.state_dict(), lightning_module).items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        dst = tiny()
        assert not same_weights(src, dst)
        load_weights(dst, str(path))
        assert same_weights(src, dst), name


def test_the_real_akamaster_file_loads_by_name(tmp_path):
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "ckpt", "akamaster", "resnet20-12fca82f.th")
    if not os.path.exists(path):
        pytest.skip("../shared/ckpt/akamaster is not present")
    model = load_weights(get_model("resnet20_a", num_classes=10), path)
    assert model.conv1.weight.abs().sum() > 0


def test_bad_checkpoint_files_are_one_line_errors_and_pickled_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    good = tmp_path / "good.pth"
    torch.save({"model": tiny().state_dict()}, good)
    (tmp_path / "evil.pth").write_bytes(b"")
    torch.save({"model": tiny().state_dict(), "x": Evil()}, tmp_path / "evil.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    (tmp_path / "trunc.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    expect = {"evil": "refused to unpickle posix.system", "empty": "the file is empty",
              "text": "not a readable PyTorch checkpoint", "trunc": "not a readable PyTorch checkpoint"}
    for name, words in expect.items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(str(tmp_path / f"{name}.pth"))
        assert words in str(e.value) and "\n" not in str(e.value), name
    assert not marker.exists()


def test_checkpoints_get_the_users_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint({"x": torch.zeros(1)}, str(tmp_path / "a.pt"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.pt").st_mode) == 0o644


# --------------------------------------------------------------------- the seeds' command lines
# Fast-Datafree scripts/fast_cifar.sh: 15 lines, one per (pair, g_steps); every line shares the
# common part. scripts/deepinv_cifar.sh and cmi_cifar.sh: two lines each.
_FAST_COMMON = ("--batch_size 256 --lr 0.2 --kd_steps 400 --ep_steps 400 --adv {adv} --bn 10.0 --oh {oh} --act 0 "
                "--balance 0 --gpu 0 --T 20 --seed 0 --bn_mmt 0.9 --warmup 20 --epochs 220 --dataset cifar100 "
                "--method fast_meta --g_steps {g} --lr_z {lr_z} --lr_g {lr_g} {models}--is_maml 1 --reset_l0 1 "
                "--reset_bn 0 --save_dir run/{tag}-{g} --log_tag {tag}-{g}")
_FAST_PAIRS = [("1.33", "0.5", "--teacher resnet34 --student resnet18 ", "r34"),
               ("1.0", "0.5", "--teacher vgg11 --student resnet18 ", "vgg"), ("1.1", "0.4", "", "wrn"),
               ("1.1", "0.4", "--student wrn40_1 ", "wrnS401"), ("1.1", "0.4", "--student wrn16_2 ", "wrnS162")]
_FAST_STEPS = [("2", "0.015", "5e-3"), ("5", "0.01", "3e-3"), ("10", "0.01", "2e-3")]
_BASELINES = [
    "--method deepinv --dataset cifar10 --batch_size 256 --teacher wrn40_2 --student wrn16_1 --lr 0.1 --epochs 200 "
    "--kd_steps 400 --ep_steps 400 --g_steps 1000 --lr_g 0.1 --adv 1 --bn 10 --oh 1 --T 20 --act 0 --balance 0 "
    "--gpu 0 --seed 0 --save_dir run/deepinv --log_tag deepinv",
    "--method deepinv --dataset cifar10 --batch_size 256 --teacher wrn40_2 --student wrn16_1 --lr 0.1 --epochs 200 "
    "--kd_steps 200 --ep_steps 200 --g_steps 10 --lr_g 1 --adv 1 --bn 10 --oh 1 --T 20 --act 0 --balance 0 "
    "--gpu 0 --seed 0 --save_dir run/deepinv_fast --log_tag deepinv_fast",
    "--method cmi --dataset cifar10 --batch_size 256 --teacher wrn40_2 --student wrn16_1 --lr 0.1 --kd_steps 400 "
    "--ep_steps 400 --g_steps 200 --lr_g 1e-3 --adv 0.5 --bn 1.0 --oh 1.0 --cr 0.8 --cr_T 0.2 --act 0 --balance 0 "
    "--gpu 0 --seed 0 --T 20 --save_dir run/cmi --log_tag cmi",
    "--method cmi --dataset cifar100 --batch_size 256 --teacher wrn40_2 --student wrn16_1 --lr 0.1 --kd_steps 400 "
    "--ep_steps 400 --g_steps 5 --lr_g 1e-3 --adv 0.5 --bn 1.0 --oh 1.0 --cr 0 --cr_T 0.2 --act 0 --balance 0 "
    "--gpu 2 --seed 0 --T 20 --save_dir run/cmi_fast_cifar100_5 --log_tag cmi_fast_cifar100_5",
]
PUBLISHED = [_FAST_COMMON.format(adv=a, oh=o, models=m, tag=t, g=g, lr_z=z, lr_g=lg)
             for a, o, m, t in _FAST_PAIRS for g, z, lg in _FAST_STEPS] + _BASELINES


@pytest.fixture
def reference_layout(tmp_path, monkeypatch):
    """A working folder as the reference expects it: teachers at checkpoints/pretrained/ in
    Fast-Datafree's layout, and a small stand-in for each test split (no CIFAR here)."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("checkpoints/pretrained")
    for dataset, classes, teacher in [("cifar100", 100, "resnet34"), ("cifar100", 100, "vgg11"),
                                      ("cifar100", 100, "wrn40_2"), ("cifar10", 10, "wrn40_2")]:
        sd = get_model(teacher, num_classes=classes).state_dict()
        torch.save({"state_dict": sd, "best_acc1": 0.0}, f"checkpoints/pretrained/{dataset}_{teacher}.pth")
    real = ds.get_dataset

    def get_dataset(name, split="train", data_root=ds.DEFAULT_DATA_ROOT, download=True):
        if name not in ("cifar10", "cifar100"):
            return real(name, split, data_root, download)
        spec = ds.dataset_spec(name)
        g = torch.Generator().manual_seed(0)
        return ds.TensorSplit(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g),
                              torch.arange(8) % spec.num_classes, spec)

    monkeypatch.setattr(ds, "get_dataset", get_dataset)
    import engine.data

    monkeypatch.setattr(engine.data, "get_dataset", get_dataset, raising=False)
    return tmp_path


def test_every_published_fast_datafree_line_parses_and_passes_every_check(reference_layout, capsys):
    assert len(PUBLISHED) == 19
    for line in PUBLISHED:
        argv = line.split() + ["--dry_run"]
        assert dfkd.main(argv) == 0, line
        out, err = capsys.readouterr()
        assert "all checks passed, nothing written" in out
        assert "--gpu" in err and "no CUDA" in err  # honoured as --device where CUDA exists, else a warning
        assert "does not use --act" in err  # the lines' --act 0 --balance 0: fast_meta / deepinv / cmi ignore them
    assert not os.path.exists("run")
    args = dfkd.parse_args(PUBLISHED[4].split())
    assert (args.teacher, args.student, args.g_steps, args.lr_g, args.lr_z, args.adv, args.oh) == \
        ("vgg11", "resnet18", 5, 3e-3, 0.01, 1.0, 0.5)


def test_reference_device_and_launcher_flags_are_honoured_or_named(reference_layout, capsys):
    argv = PUBLISHED[7].split() + ["--wd", "5e-4", "-j", "2", "-p", "25", "--fp16", "--multiprocessing-distributed",
                                   "--world_size", "1", "--rank", "0", "--dist-url", "tcp://127.0.0.1:23456",
                                   "--start_epoch", "3", "--pretrained"]
    args = dfkd.parse_args(argv)
    assert (args.weight_decay, args.workers, args.log_every) == (5e-4, 2, 25)
    err = capsys.readouterr().err
    for flag in ("--fp16", "--multiprocessing_distributed", "--world_size", "--rank", "--dist_url", "--start_epoch",
                 "--pretrained"):
        assert flag in err, flag
    assert args.device == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_repdistiller_train_teacher_flags_map_to_cifar100_py():
    args = cifar100.parse_args(["--model", "resnet32x4", "--learning_rate", "0.02", "--lr_decay_epochs", "100,150",
                                "--lr_decay_rate", "0.2", "--num_workers", "3", "--trial", "2", "--print_freq", "7"])
    assert (args.lr, args.milestones, args.gamma, args.workers, args.log_every) == (0.02, [100, 150], 0.2, 3, 7)
    assert args.save_dir == os.path.join("run", "teachers", "cifar100_resnet32x4_trial_2")


def test_tiny_imagenet_is_an_alias():
    assert ds.dataset_spec("tiny_imagenet").name == "tinyimagenet"
    assert dfkd.parse_args(["--dataset", "tiny_imagenet"]).dataset == "tinyimagenet"


def test_abbreviations_are_refused_so_presets_never_override_a_given_flag(capsys):
    with pytest.raises(SystemExit) as e:
        dfkd.parse_args(["--quick", "--epoch", "3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean --epochs" in err
    assert dfkd.parse_args(["--quick", "--epochs", "3"]).epochs == 3
    assert cifar100.parse_args(["--quick", "--epochs", "3"]).epochs == 3


# ------------------------------------------------------------------------------------ defaults
def test_with_no_loss_flags_each_method_runs_its_published_recipe():
    fm = dfkd.parse_args(["--method", "fast_meta"])
    assert (fm.g_steps, fm.lr_g, fm.lr_z, fm.adv, fm.bn, fm.oh, fm.bn_mmt, fm.reset_l0, fm.lr, fm.epochs, fm.warmup) == \
        (5, 3e-3, 0.01, 1.1, 10.0, 0.4, 0.9, 1, 0.2, 220, 20)
    di = dfkd.parse_args(["--method", "deepinv"])
    assert (di.g_steps, di.lr_g, di.adv, di.bn, di.oh) == (1000, 0.1, 1.0, 10.0, 1.0)
    dafl = dfkd.parse_args(["--method", "dafl"])
    assert (dafl.adv, dafl.oh, dafl.act, dafl.balance, dafl.kd_steps) == (0.0, 1.0, 0.001, 20.0, 5)
    given = dfkd.parse_args(["--method", "fast_meta", "--adv", "0.3"])
    assert given.adv == 0.3 and given.bn == 10.0


def test_config_file_sets_flags_and_the_command_line_overrides_it(tmp_path, capsys):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("method: deepinv\ng_steps: 7\nlr_g: 2e-3\nact: 0.5\n")
    args = dfkd.parse_args(["--config", str(cfg), "--g_steps", "3"])
    assert (args.method, args.g_steps, args.lr_g, args.bn) == ("deepinv", 3, 2e-3, 10.0)
    (tmp_path / "bad.yaml").write_text("g_stepz: 3\n")
    with pytest.raises(UsageError, match="unknown flag 'g_stepz'.*g_steps"):
        dfkd.parse_args(["--config", str(tmp_path / "bad.yaml")])


def test_every_recipe_file_is_read_by_the_parser():
    from engine.recipes import list_recipes, recipe_path
    from engine.launch import load_config

    names = list_recipes()
    assert {f"{m}_cifar" for m in dfkd.SYNTHESIZERS} <= set(names)
    for name in names:
        cfg = load_config(recipe_path(name), dfkd.build_parser())
        assert cfg["method"] in dfkd.SYNTHESIZERS


# ------------------------------------------------------------------ bad input, nothing written
QUICK_T = ["--quick", "--teacher_ckpt"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher = get_model("resnet8", num_classes=10, in_chans=1)
    torch.save({"model": teacher.state_dict(), "accuracy": torch.tensor(90.0)}, tmp_path / "t.pth")
    return tmp_path


def fails(argv, capsys, words, entry=dfkd.main):
    assert entry(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error:") and words in err[-1], (argv, err)


# The table of bad inputs, each one line and nothing written (the probe-forward mismatches among them), is
# tests/badinputs.py (test_bad_inputs.py).


def test_missing_dataset_and_offline_download_are_one_line(workdir, capsys, monkeypatch):
    fails(["--dataset", "cifar10", "--teacher", "resnet8", "--teacher_ckpt", "c10.pth", "--save_dir", "out"],
          capsys, "no such checkpoint")
    torch.save(get_model("resnet8", num_classes=10).state_dict(), workdir / "c10.pth")
    argv = ["--dataset", "cifar10", "--teacher", "resnet8", "--student", "resnet8", "--teacher_ckpt", "c10.pth",
            "--save_dir", "out", "--data_root", str(workdir / "nodata")]
    fails(argv + ["--no_download"], capsys, "--no_download is set")
    import torchvision.datasets.cifar as tv_cifar

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    fails(argv, capsys, "the download failed")
    assert not os.path.exists(workdir / "out")


def test_quick_with_a_bad_student_trains_no_teacher(workdir, capsys):
    fails(["--quick", "--student", "nope", "--save_dir", "out"], capsys, "unknown model 'nope'")
    assert not os.path.exists(workdir / "run")


TINY = ["--quick", "--teacher_ckpt", "t.pth", "--epochs", "2", "--warmup", "1", "--ep_steps", "2", "--kd_steps", "1",
        "--batch_size", "16", "--g_steps", "1", "--no_progress"]


def test_a_folder_holding_another_run_is_refused_unless_resume_or_overwrite(workdir, capsys):
    assert dfkd.main(TINY + ["--save_dir", "out"]) == 0
    before = {f: os.path.getmtime(workdir / "out" / f) for f in ("last.pt", "metrics.json", "log.txt")}
    fails(TINY + ["--save_dir", "out"], capsys, "already holds a run")
    assert {f: os.path.getmtime(workdir / "out" / f) for f in before} == before
    fails(TINY + ["--save_dir", "out", "--resume", "--overwrite"], capsys, "not both")
    assert dfkd.main(TINY + ["--save_dir", "out", "--overwrite"]) == 0
    log = (workdir / "out" / "log.txt").read_text()
    assert log.count("command:") == 1 and "--overwrite: removed" in log


def test_resume_refuses_another_runs_checkpoint_and_changed_flags(workdir, capsys):
    assert dfkd.main(TINY + ["--save_dir", "out"]) == 0
    capsys.readouterr()
    fails(TINY + ["--save_dir", "out", "--resume", "--method", "fast"], capsys, "the checkpoint is of --method fast_meta")
    fails(TINY + ["--save_dir", "out", "--resume", "--lr", "0.5"], capsys, "--lr 0.5 (checkpoint: 0.1)")
    fails(TINY + ["--save_dir", "out", "--resume", "--pool_capacity", "10"], capsys, "--pool_capacity 10")
    fails(TINY[:3] + ["--epochs", "1", "--warmup", "0"] + TINY[7:] + ["--save_dir", "out", "--resume"], capsys,
          "more than --epochs 1")
    teacher_run = workdir / "teach"
    assert cifar100.main(["--quick", "--epochs", "1", "--save_dir", str(teacher_run), "--no_progress"]) == 0
    fails(TINY + ["--save_dir", "out", "--resume", str(teacher_run / "last.pt")], capsys, "a checkpoint of a teacher run")
    assert dfkd.main(TINY[:3] + ["--epochs", "3"] + TINY[5:] + ["--save_dir", "out", "--resume"]) == 0
    log = (workdir / "out" / "log.txt").read_text()
    assert "the cosine schedule is re-planned over 2 epochs" in log


def test_a_late_expected_error_is_also_the_last_line_of_log_txt(tmp_path):
    logger = RunLogger(str(tmp_path), tensorboard=False, console=False)
    with pytest.raises(UsageError):
        with logger:
            raise UsageError("something went wrong")
    assert (tmp_path / "log.txt").read_text().strip().endswith("error: something went wrong")


# --------------------------------------------------------------------- models beyond the registry
def test_torchvision_and_file_models_by_name(tmp_path, workdir, capsys):
    tv = get_model("torchvision:resnet18", num_classes=7)
    assert tv(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    with pytest.raises(KeyError, match="unknown torchvision model 'resnet19'"):
        get_model("torchvision:resnet19", num_classes=7)
    (tmp_path / "mynet.py").write_text(
        "import torch.nn as nn\n"
        "def small(num_classes, in_chans=3):\n"
        "    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    net = get_model(f"{tmp_path / 'mynet.py'}:small", num_classes=10, in_chans=1)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(KeyError, match="has no callable 'big'. It defines: .*small"):
        get_model(f"{tmp_path / 'mynet.py'}:big", num_classes=10)
    # the data-free entry takes it as the student, checks it with a probe forward, and runs
    argv = TINY + ["--student", f"{tmp_path / 'mynet.py'}:small", "--save_dir", "out", "--dry_run"]
    assert dfkd.main(argv) == 0
    fails(TINY + ["--student", "torchvision:resnet18", "--save_dir", "out"], capsys, "3-channel images")


def test_timm_models_need_timm(workdir):
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="timm is not installed"):
            get_model("timm:resnet18", num_classes=10)
    else:
        assert get_model("timm:resnet18", num_classes=10)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_export_writes_the_student_weights_alone(workdir):
    assert dfkd.main(TINY + ["--save_dir", "out", "--export", "student.pt"]) == 0
    sd = torch.load(workdir / "student.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    student = get_model("lenet5_bn", num_classes=10, in_chans=1)
    student.load_state_dict(sd)  # strict: exactly the registry model's keys
    last = load_checkpoint(str(workdir / "out" / "last.pt"))["model"]
    assert all(torch.equal(sd[k], last[k]) for k in sd)


# ---------------------------------------------------------------------- normalisation by name
def test_a_checkpoint_family_brings_its_normalisation():
    from engine.data import build_loader
    from registry.models import model_normalization

    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert model_normalization("resnet20_a", "cifar10") == imagenet  # akamaster: ImageNet statistics on CIFAR-10
    assert model_normalization("cifar100_resnet20", "cifar100") == ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761))
    assert model_normalization("resnet20", "cifar10") is None  # the dataset's own
    default = next(iter(build_loader("digits", "test", 8, torch.device("cpu"), "unused")))[0]
    other = next(iter(build_loader("digits", "test", 8, torch.device("cpu"), "unused",
                                   normalization=((0.5,), (0.25,)))))[0]
    spec = ds.dataset_spec("digits")
    assert torch.allclose(default * spec.std[0] + spec.mean[0], other * 0.25 + 0.5, atol=1e-5)


def test_data_free_synthesis_uses_the_teachers_normalisation(workdir, reference_layout):
    torch.save(get_model("resnet20_a", num_classes=10).state_dict(), "aka.th")
    args = dfkd.parse_args(["--dataset", "cifar10", "--teacher", "resnet20_a", "--student", "resnet8",
                            "--teacher_ckpt", "aka.th", "--save_dir", "out"])
    spec, syn, *_ = dfkd.preflight(args, [])
    assert tuple(syn.mean) == (0.485, 0.456, 0.406) and tuple(syn.std) == (0.229, 0.224, 0.225)


def test_seed_alone_fixes_the_run_whatever_ran_before_in_the_process(workdir):
    """The preflight builds the models before the run is seeded; the run itself must not inherit
    the RNG state that leaves (the student's initial weights follow --seed)."""
    assert dfkd.main(TINY + ["--save_dir", "a", "--epochs", "2"]) == 0
    torch.rand(7)  # a different global RNG state before the second run
    assert dfkd.main(TINY + ["--save_dir", "b", "--epochs", "2"]) == 0
    a, b = (load_checkpoint(str(workdir / d / "last.pt"))["model"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert dfkd.main(TINY + ["--save_dir", "c", "--epochs", "2", "--seed", "1"]) == 0
    c = load_checkpoint(str(workdir / "c" / "last.pt"))["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_the_synthetic_set_exports_as_pngs_or_pt_and_reads_back_as_cmi_init(workdir, capsys):
    from datafree.pool import iter_image_set

    assert dfkd.main(TINY + ["--save_dir", "out", "--export_images", "syn"]) == 0
    assert dfkd.main(TINY + ["--save_dir", "out2", "--export_images", "syn.pt"]) == 0
    pngs = sorted(os.listdir(workdir / "syn"))
    pt = torch.load(workdir / "syn.pt", weights_only=True)
    assert pt.dtype == torch.uint8 and pt.shape[1:] == (1, 32, 32) and len(pngs) == len(pt) > 0
    from_png = torch.cat(list(iter_image_set(str(workdir / "syn"), 32, 1)))
    assert torch.equal(from_png, pt)  # the same pool (same seed), lossless both ways
    assert dfkd.main(TINY + ["--save_dir", "out3", "--cmi_init", "syn.pt"]) == 0
    import json

    synthesized = json.loads((workdir / "out" / "metrics.json").read_text())["history"][-1]["syn_images"]
    with_init = json.loads((workdir / "out3" / "metrics.json").read_text())["history"][-1]["syn_images"]
    assert with_init == synthesized + len(pt)
    fails(TINY + ["--method", "dafl", "--save_dir", "out4", "--export_images", "x"], capsys, "keeps no image set")


def test_grids_carry_the_teachers_class_and_epochs_count_from_one(workdir):
    import json

    from engine.logger import label_tiles

    grid = torch.zeros(3, 2 + 2 * 34, 2 + 34)  # two black 32x32 tiles, make_grid's padding 2
    out = label_tiles(grid, [7, 3], 32, 32, nrow=1)
    assert out[:, 2:14, 2:10].max() > 0.5 and out[:, 36:48, 2:10].max() > 0.5  # a light digit in each corner
    assert out[:, 20:34, 20:34].max() == 0.0  # the rest of the tile untouched
    assert dfkd.main(TINY + ["--save_dir", "out"]) == 0
    metrics = json.loads((workdir / "out" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["last_epoch"] == 2
    assert sorted(os.listdir(workdir / "out" / "images")) == ["epoch0001.png", "epoch0002.png"]
    log = (workdir / "out" / "log.txt").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log


def test_a_teacher_with_no_dataset_at_all(workdir, capsys):
    """A custom dataset by its shape and statistics, and --no_eval: data-free KD with no data."""
    (workdir / "net.py").write_text(
        "import torch.nn as nn\n"
        "def net(num_classes, in_chans):\n"
        "    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    torch.manual_seed(0)
    torch.save(get_model("net.py:net", num_classes=5, in_chans=3).state_dict(), workdir / "mine.pt")
    custom = ["--dataset", "my_parts", "--num_classes", "5", "--img_size", "24", "--mean", "0.4", "0.4", "0.4",
              "--std", "0.2", "0.2", "0.2", "--teacher", "net.py:net", "--student", "net.py:net",
              "--teacher_ckpt", "mine.pt", "--epochs", "2", "--warmup", "1", "--ep_steps", "2", "--kd_steps", "1",
              "--batch_size", "8", "--g_steps", "1", "--ngf", "8", "--no_progress", "--save_dir", "out"]
    fails(custom, capsys, "pass --no_eval")
    two_std = custom[:10] + ["--std", "0.2", "0.2"] + custom[14:] + ["--no_eval"]
    fails(two_std, capsys, "--mean has 3 values and --std 2")
    fails(custom[:10] + custom[14:] + ["--no_eval"], capsys, "a dataset outside the registry also needs --std")
    assert not os.path.exists(workdir / "out")
    assert dfkd.main(custom + ["--no_eval", "--export", "s.pt"]) == 0
    assert os.path.exists(workdir / "out" / "last.pt") and os.path.exists(workdir / "s.pt")
    log = (workdir / "out" / "log.txt").read_text()
    assert "--no_eval, no test set" in log and "last - best -" in log


# ------------------------------------------------------------- the other entries: KD and teachers
def test_kd_entry_refuses_a_used_folder_and_a_resume_of_another_run(tmp_path, capsys):
    from kd import train as kdtrain
    from kdtools import digits_teacher_ckpt, kd_cli

    ckpt = digits_teacher_ckpt(tmp_path / "save" / "models")
    out = tmp_path / "run"
    base = kd_cli(out, "--path_t", ckpt, "--distill", "kd", "--steps_per_epoch", "2")
    assert kdtrain.main(base) == 0
    fails(base, capsys, "already holds a run", entry=kdtrain.main)
    fails(base[:-2] + ["--distill", "attention", "--resume"], capsys, "the checkpoint is of --methods kd, this command line asks for --methods attention",
          entry=kdtrain.main)
    fails(base + ["--resume", "--lr", "0.5"], capsys, "--lr 0.5 (checkpoint: 0.05)", entry=kdtrain.main)
    fails(base + ["--device", "cuda:9" if torch.cuda.is_available() else "cuda"], capsys, "--device",
          entry=kdtrain.main)
    fails(kd_cli(tmp_path / "x", "--path_t", ckpt, "--epochs", "0"), capsys, "--epochs 0", entry=kdtrain.main)
    assert not os.path.exists(tmp_path / "x")


def test_teacher_entry_checks_before_writing(tmp_path, capsys):
    out = tmp_path / "t"
    for argv, words in [(["--model", "nope"], "unknown model 'nope'"), (["--epochs", "0"], "--epochs 0"),
                        (["--lr_decay_epochs", "1,x"], "comma-separated integers"),
                        (["--dataset", "cifar10", "--data_root", str(tmp_path / "none"), "--no_download"],
                         "--no_download is set")]:
        fails(["--quick", "--save_dir", str(out)] + argv, capsys, words, entry=cifar100.main)
    assert not out.exists()
    assert cifar100.main(["--quick", "--epochs", "1", "--save_dir", str(out), "--no_progress"]) == 0
    fails(["--quick", "--epochs", "1", "--save_dir", str(out)], capsys, "already holds a run", entry=cifar100.main)
    fails(["--quick", "--epochs", "1", "--save_dir", str(out), "--resume", "--lr", "0.3"], capsys,
          "--lr 0.3 (checkpoint: 0.05)", entry=cifar100.main)
    assert cifar100.main(["--quick", "--epochs", "2", "--save_dir", str(out), "--resume", "--no_progress"]) == 0
    assert "(checkpoint: 1)" in (out / "log.txt").read_text()


def test_long_synthesis_rounds_and_warm_up_epochs_show_progress(workdir, capsys):
    small = ["--method", "deepinv", "--g_steps", "50", "--synthesis_batch_size", "4", "--ep_steps", "1"]
    argv = TINY + small + ["--save_dir", "out"]
    argv.remove("--no_progress")
    assert dfkd.main(argv) == 0
    err = capsys.readouterr().err
    assert "synthesis round" in err and "warm-up epoch 1/1" in err
    assert dfkd.main(TINY + small + ["--save_dir", "out2"]) == 0
    assert "synthesis round" not in capsys.readouterr().err  # --no_progress


def test_wandb_logs_the_same_scalars_and_is_checked_before_writing(workdir, capsys, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        fails(TINY + ["--save_dir", "w0", "--wandb", "proj"], capsys, "wandb is not installed")
        assert not os.path.exists(workdir / "w0")
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, sorted(values)))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.util.spec_from_loader("wandb", loader=None)
    fake.init = lambda **kw: calls.append(("init", kw["project"], kw["mode"], kw["dir"])) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(workdir))  # no ~/.netrc: offline
    assert dfkd.main(TINY + ["--save_dir", "w1", "--wandb", "proj"]) == 0
    assert calls[0] == ("init", "proj", "offline", "w1") and calls[-1] == ("finish",)
    steps = [c[1] for c in calls if c[0] == "log"]
    assert steps == [1, 2] and "test/top1" in [c for c in calls if c[0] == "log"][-1][2]


def test_run_subfolders_count_as_the_run_and_overwrite_clears_only_the_engines_files(tmp_path, capsys):
    """A run-level mode writes its cells in subfolders: a folder holding only such a cell is a used
    folder, --overwrite removes a previous grid's stale cells (engine files only, user files stay),
    and a folder of several runs is never wiped by --overwrite."""
    from kd import train as kdtrain
    from kdtools import digits_teacher_ckpt, kd_cli

    ckpt = digits_teacher_ckpt(tmp_path / "save" / "models", arch="lenet5", layout="plain")
    out = tmp_path / "grid"
    fast = ["--steps_per_epoch", "1", "--distill", "kdparam", "--teacher", "lenet5", "--t_model_path", ckpt,
            "--kdparam_alpha", "0.5"]
    assert kdtrain.main(kd_cli(out, *fast, "--kdparam_T", "1", "4")) == 0
    assert {"T1_a0.5", "T4_a0.5"} <= set(os.listdir(out))
    for name in os.listdir(out):  # keep only the cells: a folder of runs, not a run folder
        if (out / name).is_file():
            os.unlink(out / name)
    (out / "notes.txt").write_text("mine")
    (out / "T4_a0.5" / "mine.txt").write_text("mine")
    fails(kd_cli(out, *fast, "--kdparam_T", "2"), capsys, "already holds a run (T1_a0.5/, T4_a0.5/", entry=kdtrain.main)
    fails(kd_cli(out, *fast, "--kdparam_T", "2", "--overwrite"), capsys, "holds runs in subfolders",
          entry=kdtrain.main)
    assert (out / "T1_a0.5" / "last.pt").exists()
    (out / "log.txt").write_text("an earlier run's log\n")
    assert kdtrain.main(kd_cli(out, *fast, "--kdparam_T", "2", "--overwrite")) == 0
    assert sorted(n for n in os.listdir(out) if not n.startswith("events.")) == sorted(
        ["T2_a0.5", "T4_a0.5", "log.txt", "notes.txt", "results.json", "results.md"])
    assert os.listdir(out / "T4_a0.5") == ["mine.txt"]
    assert "an earlier run" not in (out / "log.txt").read_text()
