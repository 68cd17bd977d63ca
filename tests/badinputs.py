"""The bad inputs every entry script must refuse with one ``error:`` line, exit code 2 and no file
written (issue 10). ``tests/test_bad_inputs.py`` runs each case; run this module to print the
table of cases with the line each prints:

    python tests/badinputs.py > bad_inputs.md

Each case is ``(entry, argv, words, prior)``: ``entry`` is ``dfkd`` (kd/faster_data_free_kd.py),
``kd`` (kd/train.py) or ``teacher`` (cifar100.py); ``argv`` is added to that entry's base command
line (``BASE``, or ``PRIOR`` when ``out/`` holds the prior run of that entry); ``words`` must
appear in the error line; ``prior`` names an earlier run that ``out/`` (or, given to another
entry, ``teacher_run/``) already holds (``None``: ``out/`` does not exist).
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import List, NamedTuple, Optional, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]


class Case(NamedTuple):
    entry: str
    argv: Tuple[str, ...]
    words: str
    prior: Optional[str] = None

    def command(self) -> List[str]:
        """The full command line: the base line (the prior run's own line when resuming or
        reusing its folder, so only the flags of the case differ) plus the case's flags."""
        base = PRIOR[self.entry] if self.prior == self.entry else BASE[self.entry]
        return list(base) + list(self.argv)

    @property
    def id(self) -> str:
        return f"{self.entry}:{' '.join(self.argv)}"[:80]


BASE = {
    "dfkd": ["--quick", "--teacher_ckpt", "t.pth", "--save_dir", "out"],
    "kd": ["--dataset", "digits", "--distill", "kd", "--teacher", "resnet8", "--path_t", "t.pth", "--student",
           "lenet5_half_bn", "--epochs", "1", "--steps_per_epoch", "1", "--device", "cpu", "--no_progress",
           "--save_dir", "out"],
    "teacher": ["--quick", "--save_dir", "out"],
}
# The short runs whose folders the ``prior`` cases start from (kept tiny: seconds each).
PRIOR = {
    "dfkd": BASE["dfkd"] + ["--epochs", "2", "--warmup", "1", "--ep_steps", "2", "--kd_steps", "1", "--batch_size",
                            "16", "--g_steps", "1", "--no_progress"],
    "kd": BASE["kd"],
    "teacher": BASE["teacher"] + ["--epochs", "1", "--no_progress"],
}
SCRIPT = {"dfkd": "kd/faster_data_free_kd.py", "kd": "kd/train.py", "teacher": "cifar100.py"}
_CUDA = "cuda:9" if torch.cuda.is_available() else "cuda"

CASES: List[Case] = [
    # ---------------------------------------------------------------- data-free: names
    Case("dfkd", ("--teacher", "bogus"), "unknown model 'bogus'. Valid names:"),
    Case("dfkd", ("--student", "bogus"), "unknown model 'bogus'. Valid names:"),
    Case("dfkd", ("--method", "bogus"), "unknown data-free method 'bogus'. Valid methods:"),
    Case("dfkd", ("--dataset", "bogus"), "unknown dataset 'bogus'. Valid names:"),
    Case("dfkd", ("--device", _CUDA), "--device"),
    Case("dfkd", ("--device", "gpu"), "not a device name"),
    Case("dfkd", ("--teacher", "torchvision:resnet19"), "unknown torchvision model 'resnet19'"),
    Case("dfkd", ("--student", "torchvision:resnet18"), "torchvision classifiers take 3-channel images"),
    Case("dfkd", ("--teacher", "timm:resnet18"), "timm"),
    Case("dfkd", ("--student", "nofile.py:net"), "nofile.py"),
    Case("dfkd", ("--student", "wide.py:nothere"), "nothere"),
    # ---------------------------------------------------------------- data-free: the parser
    Case("dfkd", ("--epoch", "3"), "did you mean --epochs?"),
    Case("dfkd", ("--no_such_flag",), "unrecognized arguments: --no_such_flag"),
    Case("dfkd", ("--epochs", "ten"), "invalid int value: 'ten'"),
    Case("dfkd", ("--lr", "fast"), "invalid float value: 'fast'"),
    # ---------------------------------------------------------------- data-free: numbers
    Case("dfkd", ("--epochs", "0"), "--epochs 0: must be a positive number"),
    Case("dfkd", ("--epochs", "-3"), "--epochs -3: must be a positive number"),
    Case("dfkd", ("--batch_size", "0"), "--batch_size 0: must be a positive number"),
    Case("dfkd", ("--synthesis_batch_size", "0"), "--synthesis_batch_size 0"),
    Case("dfkd", ("--ep_steps", "0"), "--ep_steps 0"),
    Case("dfkd", ("--kd_steps", "-1"), "--kd_steps -1"),
    Case("dfkd", ("--g_steps", "0"), "--g_steps 0"),
    Case("dfkd", ("--lr", "0"), "--lr 0"),
    Case("dfkd", ("--lr", "nan"), "--lr nan"),
    Case("dfkd", ("--lr_g", "-1"), "--lr_g -1"),
    Case("dfkd", ("--T", "0"), "--T 0"),
    Case("dfkd", ("--bn", "-1"), "--bn -1"),
    Case("dfkd", ("--warmup", "12"), "--warmup 12 >= --epochs 12"),
    Case("dfkd", ("--kd_steps", "50"), "--kd_steps 50 > --ep_steps 40"),
    Case("dfkd", ("--adv", "0", "--bn", "0", "--oh", "0"), "every synthesis loss weight fast_meta uses is zero"),
    Case("dfkd", ("--method", "dafl", "--export_images", "x"), "dafl draws fresh generator batches"),
    # ---------------------------------------------------------------- data-free: files
    Case("dfkd", ("--teacher_ckpt", "missing.pt"), "--teacher_ckpt missing.pt: no such checkpoint"),
    Case("dfkd", ("--teacher_ckpt", "empty.pt"), "the file is empty"),
    Case("dfkd", ("--teacher_ckpt", "text.pt"), "not a readable PyTorch checkpoint"),
    Case("dfkd", ("--teacher_ckpt", "trunc.pt"), "not a readable PyTorch checkpoint, or truncated"),
    Case("dfkd", ("--teacher_ckpt", "evil.pt"), "refused to unpickle posix.system"),
    Case("dfkd", ("--teacher_ckpt", "t100.pth"), "does not fit"),
    Case("dfkd", ("--student", "resnet8", "--dataset", "cifar10"), "does not fit"),
    Case("dfkd", ("--student", "flat.py:net"), "student flat.py:net does not take 1x32x32 images"),
    Case("dfkd", ("--student", "wide.py:net"), "gives outputs of shape (2, 7) for a batch of 2"),
    Case("dfkd", ("--cmi_init", "nowhere"), "--cmi_init nowhere: no such file or folder"),
    Case("dfkd", ("--config", "nowhere.yaml"), "--config nowhere.yaml: no such file"),
    Case("dfkd", ("--config", "unknown_key.yaml"), "no_such_key"),
    Case("dfkd", ("--config", "broken.yaml"), "broken.yaml"),
    # ---------------------------------------------------------------- data-free: data
    Case("dfkd", ("--dataset", "cifar10", "--teacher", "resnet8", "--student", "resnet8", "--teacher_ckpt", "c10.pth",
                  "--data_root", "nodata", "--no_download"), "--no_download is set"),
    Case("dfkd", ("--dataset", "cifar10", "--teacher", "resnet8", "--student", "resnet8", "--teacher_ckpt", "c10.pth",
                  "--data_root", "emptydata", "--no_download"), "not found under --data_root emptydata"),
    Case("dfkd", ("--dataset", "parts", "--num_classes", "5", "--img_size", "24", "--mean", "0.4", "--std", "0.2"),
         "pass --no_eval"),
    Case("dfkd", ("--mean", "0.4", "0.4", "--std", "0.2"), "--mean has 2 values and --std 1"),
    # ---------------------------------------------------------------- data-free: the run folder and resume
    Case("dfkd", (), "already holds a run", prior="dfkd"),
    Case("dfkd", ("--resume", "--overwrite"), "not both"),
    Case("dfkd", ("--resume",), "no checkpoint at 'out/last.pt'"),
    Case("dfkd", ("--resume", "--method", "fast"), "the checkpoint is of --method fast_meta", prior="dfkd"),
    Case("dfkd", ("--resume", "--lr", "0.5"), "--lr 0.5 (checkpoint: 0.1)", prior="dfkd"),
    Case("dfkd", ("--resume", "--student", "lenet5"), "the checkpoint is of --student", prior="dfkd"),
    Case("dfkd", ("--resume", "--epochs", "1", "--warmup", "0"), "more than --epochs 1", prior="dfkd"),
    Case("dfkd", ("--resume", "teacher_run/last.pt"), "a checkpoint of a teacher run", prior="teacher"),
    Case("dfkd", ("--wandb", "proj"), "wandb"),
    # ---------------------------------------------------------------- kd/train.py
    Case("kd", ("--distill", "bogus"), "unknown"),
    Case("kd", ("--mode", "multikd"), "with --distill or with --mode, not both"),
    Case("kd", ("--student", "bogus"), "unknown model 'bogus'"),
    Case("kd", ("--teacher", "bogus"), "unknown model 'bogus'"),
    Case("kd", ("--dataset", "bogus"), "unknown dataset 'bogus'"),
    Case("kd", ("--path_t", "missing.pt"), "no such checkpoint"),
    Case("kd", ("--path_t", "evil.pt"), "refused to unpickle posix.system"),
    Case("kd", ("--path_t", "t100.pth"), "does not fit"),
    Case("kd", ("--epochs", "0"), "--epochs 0"),
    Case("kd", ("--batch_size", "0"), "--batch_size 0"),
    Case("kd", ("--learning_rate", "-1"), "--lr -1"),
    Case("kd", ("-r", "-1"), "--r -1"),
    Case("kd", ("--kd_T", "0"), "--kd_T 0"),
    Case("kd", ("--device", _CUDA), "--device"),
    Case("kd", ("--epoch", "3"), "did you mean --epochs?"),
    Case("kd", ("--distill", "kd", "crd", "--export", "s.pt"), "give one method"),
    Case("kd", ("--distill", "multikd", "--export", "s.pt"), "trains several models"),
    Case("kd", ("--resume", "elsewhere/last.pt"), "resumes every stage from its own folder"),
    Case("kd", ("--resume", "--overwrite"), "not both"),
    Case("kd", (), "already holds a run", prior="kd"),
    Case("kd", ("--resume", "--distill", "attention"), "the checkpoint is of --methods kd, this command line asks for --methods attention", prior="kd"),
    Case("kd", ("--resume", "--student", "lenet5"), "the checkpoint is of --student lenet5_half_bn", prior="kd"),
    Case("kd", ("--resume", "--learning_rate", "0.5"), "--lr 0.5 (checkpoint: 0.05)", prior="kd"),
    Case("kd", ("--dataset", "cifar10", "--data_root", "nodata", "--no_download"), "--no_download is set"),
    Case("kd", ("--dataset", "mnist", "--data_root", "emptydata", "--no_download"), "--data_root emptydata"),
    # ---------------------------------------------------------------- cifar100.py
    Case("teacher", ("--model", "nope"), "unknown model 'nope'"),
    Case("teacher", ("--dataset", "nope"), "unknown dataset 'nope'"),
    Case("teacher", ("--epochs", "0"), "--epochs 0"),
    Case("teacher", ("--learning_rate", "0"), "--lr 0"),
    Case("teacher", ("--lr_decay_epochs", "1,x"), "comma-separated integers"),
    Case("teacher", ("--device", _CUDA), "--device"),
    Case("teacher", ("--dataset", "cifar10", "--data_root", "nodata", "--no_download"), "--no_download is set"),
    Case("teacher", (), "already holds a run", prior="teacher"),
    Case("teacher", ("--resume", "--lr", "0.3"), "--lr 0.3 (checkpoint: 0.05)", prior="teacher"),
    Case("teacher", ("--ckpt", "text.pt", "--evaluate_only"), "not a readable PyTorch checkpoint"),
]


def make_inputs(folder: str) -> None:
    """The files the cases name, written into ``folder`` (the working directory of a case)."""
    from registry.models import get_model

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {os.path.join(folder, 'pwned')}",))

    torch.manual_seed(0)
    sd = get_model("resnet8", num_classes=10, in_chans=1).state_dict()
    good = os.path.join(folder, "t.pth")
    torch.save({"model": sd, "accuracy": torch.tensor(90.0)}, good)
    torch.save({"model": sd, "x": Evil()}, os.path.join(folder, "evil.pt"))
    torch.save(get_model("resnet8", num_classes=100, in_chans=1).state_dict(), os.path.join(folder, "t100.pth"))
    torch.save(get_model("resnet8", num_classes=10).state_dict(), os.path.join(folder, "c10.pth"))
    with open(good, "rb") as f:
        data = f.read()
    files = {"empty.pt": b"", "text.pt": b"not a checkpoint\n", "trunc.pt": data[: len(data) // 2],
             "unknown_key.yaml": b"no_such_key: 3\n", "broken.yaml": b"epochs: [1, 2\n",
             "flat.py": b"import torch.nn as nn\n"
                        b"def net(num_classes):  # made for 3x64x64 inputs\n"
                        b"    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, num_classes))\n",
             "wide.py": b"import torch.nn as nn\n"
                        b"def net(num_classes, in_chans):  # ignores num_classes\n"
                        b"    return nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
                        b" nn.Linear(4, 7))\n"}
    os.makedirs(os.path.join(folder, "emptydata"), exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)


def entry_main(entry: str):
    if entry == "dfkd":
        from kd.faster_data_free_kd import main
    elif entry == "kd":
        from kd.train import main
    else:
        from cifar100 import main
    return main


def make_prior(entry: str, folder: str) -> str:
    """Run ``PRIOR[entry]`` in ``folder`` (which holds the inputs); returns the run folder."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        rc = entry_main(entry)(list(PRIOR[entry]))
    finally:
        os.chdir(cwd)
    assert rc == 0, f"the prior {entry} run failed"
    return os.path.join(folder, "out")


def place_prior(case: Case, priors: dict, workdir: str) -> None:
    """Copy the prior run a case starts from into ``workdir`` (``out/``; a teacher run given to
    another entry goes to ``teacher_run/``)."""
    if case.prior is None:
        return
    target = "out" if case.prior == case.entry else "teacher_run"
    shutil.copytree(priors[case.prior], os.path.join(workdir, target))


def snapshot(folder: str) -> dict:
    """Every file under ``folder`` with its size and modification time."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            st = os.stat(p)
            out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns)
    return out


def main() -> int:
    """Print the Markdown table: each case with the line it prints (run from any folder)."""
    import contextlib
    import io
    import tempfile
    import warnings

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs")
        os.makedirs(inputs)
        make_inputs(inputs)
        priors = {}
        for entry in sorted({c.prior for c in CASES if c.prior}):
            folder = os.path.join(tmp, f"prior-{entry}")
            shutil.copytree(inputs, folder)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                priors[entry] = make_prior(entry, folder)
        cwd = os.getcwd()
        for i, case in enumerate(CASES):
            work = os.path.join(tmp, f"case{i}")
            shutil.copytree(inputs, work)
            place_prior(case, priors, work)
            os.chdir(work)
            err = io.StringIO()
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                    sys.argv[0] = SCRIPT[case.entry]
                    try:
                        rc = entry_main(case.entry)(case.command())
                    except SystemExit as e:  # the parser's own errors
                        rc = e.code
            finally:
                os.chdir(cwd)
            lines = err.getvalue().strip().splitlines()
            line = lines[-1] if lines else ""
            script = SCRIPT[case.entry]
            given = " ".join(case.argv) or "(the base line again)"
            where = "out/" if case.prior == case.entry else "teacher_run/"
            prior = f" ({where} holds a {case.prior} run)" if case.prior else ""
            line = line.replace("|", "\\|")
            rows.append(f"| {i + 1} | {script} | `{given}`{prior} | {rc} | {line[:220]} |")
    print("| # | entry | bad input (added to the base line) | exit | line printed |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
