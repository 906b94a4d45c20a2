"""`BatchViews` makes the views `jepa.augment` defines, only for a whole batch at once."""

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from jepa import batch_augment as B
from jepa.augment import clean_transform, view_transform


def images(n=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_clean_views_equal_the_per_image_transform():
    x = images()
    for transform in (clean_transform(32), view_transform(0.0, 32)):
        expected = torch.stack([transform(img) for img in x])
        assert torch.allclose(B.BatchViews(transform)(x), expected, atol=1e-6)


@pytest.mark.parametrize(
    "op, reference, low, high",
    [
        (B._brightness, TF.adjust_brightness, 0.6, 1.4),
        (B._contrast, TF.adjust_contrast, 0.6, 1.4),
        (B._saturation, TF.adjust_saturation, 0.6, 1.4),
        (B._hue, TF.adjust_hue, -0.1, 0.1),
    ],
)
def test_each_jitter_op_is_torchvisions_with_a_per_image_factor(op, reference, low, high):
    x = TF.to_dtype(images(), torch.float32, scale=True)
    factors = torch.empty(len(x)).uniform_(low, high)
    out = op(x.clone(), factors[:, None, None, None])
    expected = torch.stack([reference(img, float(f)) for img, f in zip(x, factors, strict=True)])
    assert torch.allclose(out, expected, atol=1e-5)


def test_color_jitter_applies_the_ops_in_each_images_own_order():
    step = v2.ColorJitter(0.4, 0.4, 0.4, 0.1)
    x = TF.to_dtype(images(), torch.float32, scale=True)
    torch.manual_seed(3)
    out = B._color_jitter(step, x)
    # Replay the same draws (four factor vectors, then the orders) through torchvision.
    torch.manual_seed(3)
    n = len(x)
    factors = [torch.empty(n).uniform_(*bounds) for bounds in (step.brightness, step.contrast)]
    factors += [torch.empty(n).uniform_(*bounds) for bounds in (step.saturation, step.hue)]
    order = torch.rand(n, 4).argsort(dim=1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(n):
        img = x[i]
        for op in order[i].tolist():
            img = ops[op](img, float(factors[op][i]))
        assert torch.allclose(out[i], img, atol=1e-5), i


def test_gaussian_blur_is_torchvisions_with_a_per_image_sigma():
    step = v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))
    x = TF.to_dtype(images(size=12), torch.float32, scale=True)
    torch.manual_seed(4)
    out = B._gaussian_blur(step, x)
    torch.manual_seed(4)
    sigmas = torch.empty(len(x)).uniform_(0.1, 2.0)
    for img, got, sigma in zip(x, out, sigmas, strict=True):
        expected = TF.gaussian_blur(img, [5, 5], [float(sigma), float(sigma)])
        assert torch.allclose(got, expected, atol=1e-5)


def test_crop_boxes_follow_torchvisions_sampler():
    # Same distribution as RandomResizedCrop.make_params, compared by mean and spread.
    torch.manual_seed(0)
    step = v2.RandomResizedCrop(32, scale=(0.08, 1.0))
    img = torch.zeros(3, 64, 48)
    draws = [step.make_params([img]) for _ in range(4000)]
    ref = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in draws]).float()
    ours = torch.stack(B.crop_boxes(40000, 64, 48, step.scale, step.ratio), dim=1).float()
    assert torch.allclose(ours.mean(0), ref.mean(0), rtol=0.05, atol=0.5)
    assert torch.allclose(ours.std(0), ref.std(0), rtol=0.06)
    top, left, h, w = B.crop_boxes(1000, 64, 48, step.scale, step.ratio)
    assert (top >= 0).all() and (top + h <= 64).all() and (left + w <= 48).all()
    assert (h > 0).all() and (w > 0).all()


def test_crops_resize_as_torchvision():
    x = TF.to_dtype(images(n=4), torch.float32, scale=True)
    step = v2.RandomResizedCrop(32, scale=(0.3, 1.0))
    torch.manual_seed(5)
    out = B._resized_crops(step, x)
    torch.manual_seed(5)
    boxes = B.crop_boxes(len(x), 8, 8, step.scale, step.ratio)
    for i, (top, left, h, w) in enumerate(torch.stack(boxes, dim=1).tolist()):
        expected = TF.resized_crop(x[i], top, left, h, w, [32, 32], antialias=True)
        assert torch.allclose(out[i], expected, atol=1e-6)


def test_strong_views_match_the_per_image_statistics():
    # Whole recipe at s = 1: per-pixel mean and spread agree with the per-image path.
    x = images(n=1, size=8).repeat(3000, 1, 1, 1)
    transform = view_transform(1.0, 16)
    torch.manual_seed(0)
    ours = B.BatchViews(transform)(x)
    torch.manual_seed(1)
    ref = torch.stack([transform(img) for img in x])
    assert abs(float(ours.mean() - ref.mean())) < 0.03
    assert abs(float(ours.std() - ref.std())) < 0.03
    assert torch.allclose(ours.mean(0), ref.mean(0), atol=0.12)


def test_unknown_steps_are_refused():
    with pytest.raises(TypeError, match="RandomRotation"):
        B.BatchViews(v2.Compose([v2.RandomRotation(10)]))
