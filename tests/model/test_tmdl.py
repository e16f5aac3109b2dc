"""TMDL against the paper's equations, with its own weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llnm.model.config import PRESETS, preset
from llnm.model.tmdl import TMDL, BidirectionalBlock, attention_rollout, count_parameters, dummy_inputs, key_bias


def by_hand_attention(q, k, v, heads, keep):
    """softmax(Q K^T / sqrt(d_k)) V per head, with masked keys removed from the softmax."""
    b, nq, d = q.shape
    dk = d // heads
    outs = []
    for h in range(heads):
        sl = slice(h * dk, (h + 1) * dk)
        scores = q[:, :, sl] @ k[:, :, sl].transpose(1, 2) / dk ** 0.5
        scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
        outs.append(scores.softmax(-1) @ v[:, :, sl])
    return torch.cat(outs, dim=-1)


def test_bidirectional_block_matches_equations_4_to_10():
    torch.manual_seed(0)
    config = preset("tiny", alpha=0.7)
    block = BidirectionalBlock(config).eval()
    x_i, x_t = torch.randn(2, 6, config.hidden), torch.randn(2, 5, config.hidden)
    keep_i = torch.ones(2, 6, dtype=torch.bool)
    keep_t = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got_i, got_t, _ = block(x_i, x_t, key_bias(keep_i.float(), x_i.dtype), key_bias(keep_t.float(), x_t.dtype))

    h, a = config.heads, 0.7
    q_i, k_i, v_i = F.linear(block.norm_i(x_i), block.qkv_i.weight, block.qkv_i.bias).chunk(3, -1)
    q_t, k_t, v_t = F.linear(block.norm_t(x_t), block.qkv_t.weight, block.qkv_t.bias).chunk(3, -1)
    t_i = by_hand_attention(q_i, k_i, v_i, h, keep_i) + a * by_hand_attention(q_i, k_t, v_t, h, keep_t)
    t_t = by_hand_attention(q_t, k_t, v_t, h, keep_t) + a * by_hand_attention(q_t, k_i, v_i, h, keep_i)
    y_i = x_i + block.out_i(t_i)
    y_t = x_t + block.out_t(t_t)
    y_i = y_i + block.mlp_i(block.mlp_norm_i(y_i))
    y_t = y_t + block.mlp_t(block.mlp_norm_t(y_t))
    torch.testing.assert_close(got_i, y_i, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_t, y_t, atol=1e-5, rtol=1e-5)


def test_fused_and_explicit_attention_agree():
    model = TMDL(preset("tiny")).eval()
    x = dummy_inputs(model.config, batch=3)
    with torch.no_grad():
        fused = model(**x)
        explicit = model(**x, return_attention=True)
    torch.testing.assert_close(fused[0], explicit[0], atol=1e-5, rtol=1e-5)
    assert len(explicit[2]) == model.config.bi_blocks + model.config.self_blocks


def test_padding_tokens_do_not_change_the_output():
    model = TMDL(preset("tiny")).eval()
    x = dummy_inputs(model.config, batch=1)  # 12 real report tokens, 38 padding
    y = {k: v.clone() for k, v in x.items()}
    y["text_states"][:, 12:] = torch.randn_like(y["text_states"][:, 12:]) * 10
    with torch.no_grad():
        torch.testing.assert_close(model(**x)[0], model(**y)[0])


def test_occluded_group_is_ignored():
    model = TMDL(preset("tiny")).eval()
    x = dummy_inputs(model.config, batch=1)
    x["group_keep"][0, 0] = 0.0  # location occluded
    y = {k: v.clone() for k, v in x.items()}
    y["images"][:, 0] = torch.rand_like(y["images"][:, 0])  # a different x_l
    with torch.no_grad():
        torch.testing.assert_close(model(**x)[0], model(**y)[0])
        x["group_keep"][0, 0] = 1.0
        y["group_keep"][0, 0] = 1.0
        assert not torch.allclose(model(**x)[0], model(**y)[0])


def test_rollout_is_scaled_per_sample():
    model = TMDL(preset("tiny")).eval()
    with torch.no_grad():
        _, _, attentions, mask = model(**dummy_inputs(model.config, batch=2), return_attention=True)
    importance = attention_rollout(attentions, mask, model.config.image_tokens)
    assert importance.shape == (2, model.config.image_tokens)
    np.testing.assert_allclose(importance.max(dim=1).values.numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(importance.min(dim=1).values.numpy(), 0.0, atol=1e-6)


def test_paper_preset_size():
    c = PRESETS["paper"]
    assert (c.hidden, c.heads, c.hidden // c.heads, c.bi_blocks, c.self_blocks, c.text_tokens) == (768, 12, 64, 4, 12, 50)
    assert c.text_side_tokens == 54
    assert c.shape_input == "length_width"  # "calculated the length and width to obtain the shape feature x_s"
    assert c.location_aspect == "keep"  # "to preserve the morphology ... (particularly the aspect ratio)"


@pytest.mark.slow
def test_paper_preset_forward_on_cpu():
    torch.manual_seed(0)
    model = TMDL(PRESETS["paper"]).eval()
    assert 140e6 < count_parameters(model) < 150e6
    with torch.no_grad():
        logit, risk, _, _ = model(**dummy_inputs(model.config, batch=1))
    assert logit.shape == (1,) and risk.shape == (1, 3) and torch.isfinite(logit).all()


def test_length_and_width_project_onto_the_one_shape_token():
    """shape_input "length_width" (the paper's x_s): two numbers, one linear projection, still m + 4
    text-side tokens; both numbers reach the output and move only the x_s token."""
    torch.manual_seed(0)
    model = TMDL(preset("tiny", shape_input="length_width")).eval()
    assert model.config.clinical_inputs == ("sex", "age", "x_e", "x_s_length", "x_s_width")
    assert model.clinical_weight.shape == (5, model.config.hidden)
    assert model.clinical_bias.shape == (4, model.config.hidden) and model.text_pos.shape[1] == model.config.text_side_tokens
    x = dummy_inputs(model.config, batch=1)
    assert x["clinical"].shape == (1, 5)
    with torch.no_grad():
        base = model(**x)[0]
        for k in (3, 4):
            moved = {**x, "clinical": x["clinical"].clone()}
            moved["clinical"][0, k] += 1.0
            assert not torch.allclose(model(**moved)[0], base)
        # occluding the morphology group removes both numbers with the x_s token
        keep = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
        occluded = model(**{**x, "group_keep": keep})[0]
        moved = {**x, "clinical": x["clinical"].clone(), "group_keep": keep}
        moved["clinical"][0, 3:] += 5.0
        torch.testing.assert_close(model(**moved)[0], occluded)


def test_the_position_token_is_one_more_scalar_token_in_the_location_group():
    """location_input "map_and_position": capsule distance and the place in the gland box, three numbers
    onto one fifth scalar token; it moves the output, and occluding the location group removes it
    with x_l. The default keeps the four tokens (the shipped model's state dict is unchanged)."""
    torch.manual_seed(0)
    model = TMDL(preset("tiny", location_input="map_and_position")).eval()
    c = model.config
    assert c.clinical_inputs == ("sex", "age", "x_e", "x_s", "x_p_capsule", "x_p_vertical", "x_p_horizontal")
    assert c.clinical_token_index == (0, 1, 2, 3, 4, 4, 4) and c.text_side_tokens == c.text_tokens + 5
    assert model.clinical_bias.shape == (5, c.hidden) and model.text_pos.shape[1] == c.text_side_tokens
    assert preset("tiny", shape_input="length_width", location_input="map_and_position").clinical_token_index == (
        0, 1, 2, 3, 3, 4, 4, 4)
    x = dummy_inputs(c, batch=1)
    assert x["clinical"].shape == (1, 7)
    with torch.no_grad():
        base = model(**x)[0]
        for k in (4, 5, 6):
            moved = {**x, "clinical": x["clinical"].clone()}
            moved["clinical"][0, k] += 1.0
            assert not torch.allclose(model(**moved)[0], base)
        keep = torch.tensor([[0.0, 1.0, 1.0, 1.0]])  # location occluded
        occluded = model(**{**x, "group_keep": keep})[0]
        moved = {**x, "clinical": x["clinical"].clone(), "group_keep": keep}
        moved["clinical"][0, 4:] += 5.0
        torch.testing.assert_close(model(**moved)[0], occluded)
        moved["group_keep"] = torch.tensor([[1.0, 0.0, 1.0, 1.0]])  # morphology occluded: x_p still read
        assert not torch.allclose(model(**moved)[0], model(**{**x, "group_keep": moved["group_keep"]})[0])
    assert TMDL(preset("tiny")).clinical_bias.shape[0] == 4


def test_older_preset_files_keep_the_ratio_and_point_sampling():
    """A preset.json written before these fields existed (the shipped model's) loads as it was trained."""
    import json
    from dataclasses import asdict

    from llnm.model.config import TMDLConfig

    old = {k: v for k, v in asdict(preset("compact")).items()
           if k not in ("shape_input", "image_sampling", "location_aspect")}
    config = TMDLConfig.from_json(json.dumps(old))
    assert (config.shape_input, config.image_sampling, config.location_aspect) == ("ratio", "point", "stretch")
    assert config.feature_options() == {"size": 48, "sampling": "point", "location_aspect": "stretch"}
    assert config.clinical_inputs == ("sex", "age", "x_e", "x_s")
    torch.manual_seed(0)
    assert TMDL(config).clinical_weight.shape == (4, config.hidden)
    with pytest.raises(ValueError):
        preset("tiny", shape_input="volume")
    with pytest.raises(ValueError):
        preset("tiny", image_sampling="cubic")
    with pytest.raises(ValueError):
        preset("tiny", location_aspect="fit")


def test_stream_pooling_weighs_the_image_and_text_sides_alike_whatever_their_token_counts():
    from llnm.model.tmdl import pool_weights

    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0],   # 2 image tokens kept, 5 text-side
                         [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]])  # image stream occluded
    tokens = pool_weights(mask, image_tokens=3, pooling="tokens")
    streams = pool_weights(mask, image_tokens=3, pooling="streams")
    torch.testing.assert_close(tokens[0], mask[0] / 7)
    torch.testing.assert_close(streams[0, :3], torch.tensor([0.25, 0.25, 0.0]))
    torch.testing.assert_close(streams[0, 3:], torch.full((5,), 0.1))
    torch.testing.assert_close(streams[1], tokens[1])  # an empty stream gives its half to the other
    torch.testing.assert_close(streams.sum(dim=1), torch.ones(2))


def test_stream_pooling_changes_the_pooled_vector_but_not_the_weights():
    torch.manual_seed(0)
    tokens = TMDL(preset("tiny")).eval()
    torch.manual_seed(0)
    streams = TMDL(preset("tiny", pooling="streams")).eval()
    assert tokens.state_dict().keys() == streams.state_dict().keys()
    x = dummy_inputs(tokens.config, batch=2)
    with torch.no_grad():
        assert not torch.allclose(tokens(**x)[0], streams(**x)[0])


def test_smaller_patches_give_the_image_stream_more_tokens():
    config = preset("compact", patch_size=6)
    assert config.tokens_per_image == 64 and config.image_tokens == 192
    model = TMDL(preset("tiny", patch_size=4)).eval()
    with torch.no_grad():
        logit, _, _, mask = model(**dummy_inputs(model.config, batch=1))
    assert mask.shape[1] == model.config.image_tokens + model.config.text_side_tokens
    with pytest.raises(ValueError):
        preset("compact", patch_size=7)


def test_the_conv_stem_gives_the_same_tokens_and_reads_what_a_patch_projection_cannot():
    """Early convolutions: the same token grid and outputs as the patch projection; and, unlike a linear
    projection of a patch, the stem reads a texture whatever its phase: a fine checkerboard and its
    inverse average, through a linear projection, to exactly what a flat grey of the same mean gives."""
    config = preset("tiny", image_stem="conv")
    model = TMDL(config).eval()
    with torch.no_grad():
        logit, risk, _, mask = model(**dummy_inputs(config, batch=2))
        assert logit.shape == (2,) and risk.shape == (2, 3)
        assert mask.shape[1] == config.image_tokens + config.text_side_tokens
        maps = model.embed_images(torch.rand(1, 3, config.image_size, config.image_size))
    assert all(m.shape[-2:] == (config.image_size // config.patch_size,) * 2 for m in maps)
    checker = (torch.arange(config.image_size)[:, None] + torch.arange(config.image_size)[None, :]) % 2
    flat, fine = torch.full((1, 1, config.image_size, config.image_size), 0.5), checker[None, None].float()
    patch = TMDL(preset("tiny")).eval().patch_embed[0]
    with torch.no_grad():
        texture = [((stem(fine) + stem(1 - fine)) / 2 - stem(flat)).abs().max().item()
                   for stem in (patch, model.patch_embed[0])]
    assert texture[0] < 1e-5 and texture[1] > 1e-3
    with pytest.raises(ValueError, match="multiple of 4"):
        preset("compact", image_stem="conv", patch_size=6)
