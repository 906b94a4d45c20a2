import torch

from jepa.predictor import HierarchicalPredictor


def test_parameter_count_width_512_on_1280():
    # Linear 1280->512 (1280*512 + 512), Linear 512->1280 (512*1280 + 1280),
    # LayerNorm(1280) (2*1280), Linear 1280->1280 (1280*1280 + 1280).
    expected = (1280 * 512 + 512) + (512 * 1280 + 1280) + 2 * 1280 + (1280 * 1280 + 1280)
    assert expected == 2_954_752
    model = HierarchicalPredictor(1280, width=512)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_depth_adds_blocks_and_keeps_shape():
    one = HierarchicalPredictor(64, width=16, depth=1)
    three = HierarchicalPredictor(64, width=16, depth=3)
    block = (64 * 16 + 16) + (16 * 64 + 64) + 2 * 64
    extra = sum(p.numel() for p in three.parameters()) - sum(p.numel() for p in one.parameters())
    assert extra == 2 * block
    assert three(torch.randn(5, 64)).shape == (5, 64)


def test_residual_then_layernorm_then_projection():
    model = HierarchicalPredictor(8, width=4)
    x = torch.randn(3, 8)
    block = model.blocks[0]
    expected = model.proj(block.norm(x + block.up(block.act(block.down(x)))))
    torch.testing.assert_close(model(x), expected)
