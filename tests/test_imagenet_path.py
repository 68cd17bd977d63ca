"""The ImageNet-size setting at a tiny size on CPU: torchvision teacher from a local weights file,
spatial-latent generator, RandomResizedCrop, meta-learned latents, last-step images, --cmi_init."""
import torch

from datafree import SynthesisConfig
from datafree.api import build_trainer
from datafree.generator import DeepGenerator
from datafree.pool import load_image_set
from engine.checkpoint import load_weights
from engine.trainer import TrainConfig
from registry.models import get_model


def imagenet_cfg(**kw):
    base = dict(num_classes=10, img_size=32, nc=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                batch_size=4, g_steps=2, nz=8, ngf=4, bn=0.1, oh=0.1, adv=1.0, bn_mmt=0.9, warmup=0,
                lr_g=2e-4, lr_z=0.01, generator="deep", augment="rrc_flip", keep="last", meta_z=True,
                lr_g_meta=1e-4, lr_z_meta=5e-3, z_reinit=2, is_maml=0, reptile_scale=1.0)
    base.update(kw)
    return SynthesisConfig(**base)


def test_imagenet_setting_end_to_end(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "resnet18-teacher.pth"
    torch.save(get_model("resnet18_imagenet", num_classes=10).state_dict(), weights)  # torchvision's layout
    teacher = load_weights(get_model("resnet18_imagenet", num_classes=10), str(weights))
    student = get_model("mobilenetv2_imagenet", num_classes=10)
    init = torch.rand(6, 3, 40, 40)
    torch.save((init * 255).to(torch.uint8), tmp_path / "init.pt")
    init_images = load_image_set(str(tmp_path / "init.pt"), 32, 3)
    train = TrainConfig(epochs=3, lr=0.1, schedule="cosine", save_dir=str(tmp_path / "run"), progress=False)
    trainer = build_trainer(teacher, student, "fast_meta", imagenet_cfg(), train, None, T=5.0, batch_size=3,
                            kd_steps=1, ep_steps=2, device=torch.device("cpu"), init_images=init_images)
    synth = trainer.source.synth
    assert isinstance(synth.generator, DeepGenerator)
    assert synth.z.shape == (4, 8, 2, 2) and len(synth.pool) == 6
    z_before = synth.z.detach().clone()
    trainer.fit(until_epoch=1)
    assert not torch.equal(synth.z, z_before), "the latents are meta-learned"
    assert len(synth.pool) == 6 + 2 * 4
    rebuilt = []
    build = synth.build_meta_optimizer
    synth.build_meta_optimizer = lambda: rebuilt.append(synth.round_number(trainer.source.epoch)) or build()
    trainer.fit(until_epoch=2)  # z_reinit 2 epochs = 4 rounds at 2 rounds per epoch: round 4 re-samples
    assert rebuilt == [4]
    g0 = next(synth.generator.parameters())
    assert float(synth.meta_optimizer.state[g0]["step"]) == 1  # rebuilt at round 4: one step since
    trainer.fit()  # rounds 5 and 6: no re-sample
    assert rebuilt == [4]
    assert (tmp_path / "run" / "images" / "epoch0003.png").exists()
    assert trainer.history[-1]["steps"] == 2


def test_cmi_init_folder_of_pngs(tmp_path):
    from torchvision.utils import save_image

    folder = tmp_path / "init"
    folder.mkdir()
    for i in range(3):
        save_image(torch.rand(3, 20, 20), folder / f"{i}.png")
    x = load_image_set(str(folder), 16, 3)
    assert x.shape == (3, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
