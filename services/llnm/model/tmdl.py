"""TMDL, the transformer of LLNM-Net (Shen et al. 2025, equations 4-10), readable top to bottom.

Image side: the three feature images x_l, x_t, x_m each go through their own conv patch embedding
(n tokens each, 3n in all), plus learned 1D position embeddings and dropout.
Text side: m = 50 token states of the report (projected from the text encoder's width to hidden,
with the encoder's attention mask) plus four scalar tokens (sex, age, x_e, x_s; one linear
projection each, x_s of its one or two numbers; config.location_input "map_and_position" adds a
fifth, x_p, in the location group), plus learned position embeddings: m + 4 (or 5) tokens.
Then `bi_blocks` bidirectional blocks

    T_I = Attn(Q_I, K_I, V_I) + a * Attn(Q_I, K_T, V_T)
    T_T = Attn(Q_T, K_T, V_T) + a * Attn(Q_T, K_I, V_I)

(pre-norm, an output projection per stream, residual, MLP), the two token sets concatenated,
`self_blocks` self-attention blocks, a final norm, masked mean pooling and a two-layer MLP head
giving the LLNM logit and the 3-level risk logits.

Masked keys (report padding, occluded token groups) are excluded from every attention and from the
pooling. `group_keep` (B, 4) occludes whole groups (location, morphology, report, demographics) so
contributions can be measured by re-running the exported graph. With `return_attention=True` the
attention probabilities are computed explicitly (for attention rollout, also in the ONNX graph);
otherwise F.scaled_dot_product_attention (fused) is used. Both give the same outputs.

View fusion (config.view_fusion): "probability" scores each view alone (`forward`; the study is the
mean of the per-view probabilities, outside the model). "pooled" adds a learned orientation
embedding (transverse, longitudinal, unknown) to each view's image tokens, so that the backbone
reads a view knowing its orientation (the upper third is seen along the longitudinal view only), and
`forward_studies` averages the pooled per-view vectors over the views of each study before the one
two-layer head. The embedding goes on the tokens, not on the pooled vectors: added after the
backbone, it would average to the same constant for every two-view study and tell the head nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llnm.model.config import CLINICAL_FEATURES, ORIENTATIONS, TMDLConfig


def key_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, N) keep-mask (1 keep, 0 drop) -> additive (B, 1, 1, N) attention bias.

    A large finite negative rather than -inf, so a row with every key masked stays finite."""
    return ((1.0 - mask.to(dtype)) * torch.finfo(dtype).min)[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention of queries x_q over keys/values x_kv (projections given by the caller)."""

    def __init__(self, config: TMDLConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                return_attention: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, nq, d = q.shape
        nk = k.shape[1]
        h = self.heads
        q = q.view(b, nq, h, d // h).transpose(1, 2)
        k = k.view(b, nk, h, d // h).transpose(1, 2)
        v = v.view(b, nk, h, d // h).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        if return_attention:
            scores = q @ k.transpose(-2, -1) * (d // h) ** -0.5 + bias
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p, self.training) @ v
            attention = weights.mean(dim=1)  # (B, Nq, Nk), averaged over heads
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
            attention = None
        return out.transpose(1, 2).reshape(b, nq, d), attention


class MLP(nn.Sequential):
    def __init__(self, config: TMDLConfig) -> None:
        inner = int(config.hidden * config.mlp_ratio)
        super().__init__(nn.Linear(config.hidden, inner), nn.GELU(), nn.Dropout(config.dropout),
                         nn.Linear(inner, config.hidden), nn.Dropout(config.dropout))


class BidirectionalBlock(nn.Module):
    """Eq. 4-10: each stream attends to itself and (weighted by a) to the other stream."""

    def __init__(self, config: TMDLConfig) -> None:
        super().__init__()
        d = config.hidden
        self.alpha = config.alpha
        self.norm_i, self.norm_t = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv_i, self.qkv_t = nn.Linear(d, 3 * d), nn.Linear(d, 3 * d)
        self.attn = Attention(config)
        self.out_i, self.out_t = nn.Linear(d, d), nn.Linear(d, d)
        self.drop = nn.Dropout(config.dropout)
        self.mlp_norm_i, self.mlp_norm_t = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp_i, self.mlp_t = MLP(config), MLP(config)

    def forward(self, x_i: torch.Tensor, x_t: torch.Tensor, bias_i: torch.Tensor, bias_t: torch.Tensor,
                return_attention: bool = False):
        q_i, k_i, v_i = self.qkv_i(self.norm_i(x_i)).chunk(3, dim=-1)
        q_t, k_t, v_t = self.qkv_t(self.norm_t(x_t)).chunk(3, dim=-1)
        ii, a_ii = self.attn(q_i, k_i, v_i, bias_i, return_attention)
        it, a_it = self.attn(q_i, k_t, v_t, bias_t, return_attention)
        tt, a_tt = self.attn(q_t, k_t, v_t, bias_t, return_attention)
        ti, a_ti = self.attn(q_t, k_i, v_i, bias_i, return_attention)
        x_i = x_i + self.drop(self.out_i(ii + self.alpha * it))
        x_t = x_t + self.drop(self.out_t(tt + self.alpha * ti))
        x_i = x_i + self.mlp_i(self.mlp_norm_i(x_i))
        x_t = x_t + self.mlp_t(self.mlp_norm_t(x_t))
        attention = None
        if return_attention:
            # one row-stochastic matrix over [image; text] tokens, for rollout
            top = torch.cat([a_ii, self.alpha * a_it], dim=-1)
            bottom = torch.cat([self.alpha * a_ti, a_tt], dim=-1)
            attention = torch.cat([top, bottom], dim=1) / (1.0 + self.alpha)
        return x_i, x_t, attention


class SelfBlock(nn.Module):
    def __init__(self, config: TMDLConfig) -> None:
        super().__init__()
        d = config.hidden
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn = Attention(config)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(config.dropout)
        self.mlp_norm = nn.LayerNorm(d)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, return_attention: bool = False):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        a, attention = self.attn(q, k, v, bias, return_attention)
        x = x + self.drop(self.out(a))
        x = x + self.mlp(self.mlp_norm(x))
        return x, attention


def image_stem(config: TMDLConfig) -> nn.Module:
    """One feature image (B, 1, S, S) -> its token map (B, hidden, S / patch, S / patch) (config.image_stem)."""
    d, patch = config.hidden, config.patch_size
    if config.image_stem == "patch":
        return nn.Conv2d(1, d, kernel_size=patch, stride=patch)
    width = max(8, d // 4)
    return nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1), nn.GELU(),
                         nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
                         nn.Conv2d(2 * width, d, kernel_size=patch // 4, stride=patch // 4))


class TMDL(nn.Module):
    def __init__(self, config: TMDLConfig) -> None:
        super().__init__()
        self.config = c = config
        d = c.hidden
        # image side: one conv patch embedding per feature image (x_l, x_t, x_m)
        self.patch_embed = nn.ModuleList(image_stem(c) for _ in range(3))
        self.image_pos = nn.Parameter(torch.zeros(1, c.image_tokens, d))
        # text side: report token states -> hidden; sex, age, x_e, x_s (and x_p): one linear projection
        # each (x_s from one number, the ratio, or two, length and width: config.shape_input; x_p from
        # three: config.location_input)
        self.text_proj = nn.Linear(c.text_dim, d)
        self.clinical_weight = nn.Parameter(torch.zeros(len(c.clinical_inputs), d))
        self.clinical_bias = nn.Parameter(torch.zeros(len(c.scalar_tokens), d))
        self.text_pos = nn.Parameter(torch.zeros(1, c.text_side_tokens, d))
        self.drop = nn.Dropout(c.dropout)
        self.bi_blocks = nn.ModuleList(BidirectionalBlock(c) for _ in range(c.bi_blocks))
        self.self_blocks = nn.ModuleList(SelfBlock(c) for _ in range(c.self_blocks))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(c.dropout),
                                  nn.Linear(d, 1 + c.risk_levels))
        self._init_weights()
        if c.view_fusion == "pooled":  # created last: the probability mode's weights and random stream unchanged
            self.orientation_embed = nn.Parameter(torch.zeros(len(ORIENTATIONS), d))
            nn.init.trunc_normal_(self.orientation_embed, std=0.02)

    def _init_weights(self) -> None:
        for p in (self.image_pos, self.text_pos, self.clinical_weight):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def token_masks(self, text_mask: torch.Tensor, group_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep-masks of the image tokens (B, 3n) and text-side tokens (B, m + 4 or 5) from the report's
        mask and the group switches (location, morphology, report, demographics)."""
        n = self.config.tokens_per_image
        loc, morph, report, demo = group_keep.unbind(dim=1)
        image_mask = torch.cat([loc[:, None].expand(-1, n), morph[:, None].expand(-1, 2 * n)], dim=1)
        position = [loc] * (len(self.config.scalar_tokens) - len(CLINICAL_FEATURES))  # x_p: location group
        clinical = torch.stack([demo, demo, morph, morph] + position, dim=1)
        text_side = torch.cat([text_mask * report[:, None], clinical], dim=1)
        return image_mask, text_side

    def embed_images(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) -> the three patch-embedding maps (B, hidden, g, g) (Grad-CAM++ hooks here)."""
        return [embed(images[:, k:k + 1]) for k, embed in enumerate(self.patch_embed)]

    def encode(self, images: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
               clinical: torch.Tensor, group_keep: torch.Tensor | None = None,
               orientation: torch.Tensor | None = None, return_attention: bool = False):
        """The backbone on a batch of views: (pooled (B, hidden), attentions or None, token keep-mask).

        `orientation` (B,) indexes ORIENTATIONS (pooled fusion only; None: unknown)."""
        x, attentions, mask = self.tokens(images, text_states, text_mask, clinical, group_keep, orientation,
                                          return_attention)
        return self.pool(x, mask), attentions, mask

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The masked mean pooling of the output tokens (config.pooling): (B, N, hidden) -> (B, hidden)."""
        return (x * pool_weights(mask, self.config.image_tokens, self.config.pooling)[:, :, None]).sum(dim=1)

    def tokens(self, images: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
               clinical: torch.Tensor, group_keep: torch.Tensor | None = None,
               orientation: torch.Tensor | None = None, return_attention: bool = False):
        """The backbone's output tokens before pooling: (x (B, 3n + m + 4, hidden) after the final norm,
        attentions or None, token keep-mask). The image stream's are the first `config.image_tokens`."""
        b = images.shape[0]
        if group_keep is None:
            group_keep = images.new_ones(b, 4)
        maps = self.embed_images(images)
        x_i = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
        x_i = x_i + self.image_pos
        if self.config.view_fusion == "pooled":
            if orientation is None:
                orientation = torch.full((b,), ORIENTATIONS.index("unknown"), dtype=torch.long,
                                         device=images.device)
            x_i = x_i + self.orientation_embed[orientation][:, None, :]
        x_i = self.drop(x_i)
        report = self.text_proj(text_states)
        projected = clinical[:, :, None] * self.clinical_weight
        index = self.config.clinical_token_index
        if len(set(index)) < len(index):  # several numbers onto one token (x_s length and width; x_p)
            projected = torch.cat([projected[:, [j for j, t in enumerate(index) if t == k]].sum(dim=1, keepdim=True)
                                   for k in range(len(self.config.scalar_tokens))], dim=1)
        scalars = projected + self.clinical_bias
        x_t = self.drop(torch.cat([report, scalars], dim=1) + self.text_pos)

        mask_i, mask_t = self.token_masks(text_mask.to(images.dtype), group_keep.to(images.dtype))
        bias_i, bias_t = key_bias(mask_i, x_i.dtype), key_bias(mask_t, x_t.dtype)
        attentions = []
        for block in self.bi_blocks:
            x_i, x_t, a = block(x_i, x_t, bias_i, bias_t, return_attention)
            attentions.append(a)
        x = torch.cat([x_i, x_t], dim=1)
        mask = torch.cat([mask_i, mask_t], dim=1)
        bias = key_bias(mask, x.dtype)
        for block in self.self_blocks:
            x, a = block(x, bias, return_attention)
            attentions.append(a)
        return self.norm(x), (attentions if return_attention else None), mask

    def forward(self, images: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
                clinical: torch.Tensor, group_keep: torch.Tensor | None = None,
                return_attention: bool = False, orientation: torch.Tensor | None = None):
        """images (B, 3, S, S) in [0, 1]; text_states (B, m, text_dim); text_mask (B, m) 1 = token;
        clinical (B, len(config.clinical_inputs)); group_keep (B, 4) or None (all kept); orientation (B,) or None (pooled only).

        Each row scored alone (in pooled fusion: as a study of that one view).
        Returns (llnm_logit (B,), risk_logits (B, 3), attentions or None, token keep-mask)."""
        pooled, attentions, mask = self.encode(images, text_states, text_mask, clinical, group_keep,
                                               orientation, return_attention)
        out = self.head(pooled)
        return out[:, 0], out[:, 1:], attentions, mask

    def forward_studies(self, images: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor,
                        clinical: torch.Tensor, group_keep: torch.Tensor | None, orientation: torch.Tensor | None,
                        study_index: torch.Tensor, n_studies: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled fusion: views (rows as in `forward`) of `n_studies` studies, `study_index` (B,) naming
        each row's study in [0, n_studies); the pooled vectors are averaged over each study's views
        (any number >= 1) before the head. Returns (llnm_logit (n_studies,), risk_logits (n_studies, 3))."""
        if self.config.view_fusion != "pooled":
            raise ValueError("forward_studies needs view_fusion='pooled'; probability fusion averages "
                             "per-view probabilities outside the model")
        pooled, _, _ = self.encode(images, text_states, text_mask, clinical, group_keep, orientation)
        total = pooled.new_zeros(n_studies, pooled.shape[1]).index_add(0, study_index, pooled)
        count = pooled.new_zeros(n_studies).index_add(0, study_index, pooled.new_ones(len(study_index)))
        out = self.head(total / count.clamp(min=1.0)[:, None])
        return out[:, 0], out[:, 1:]


def pool_weights(mask: torch.Tensor, image_tokens: int, pooling: str = "tokens") -> torch.Tensor:
    """(B, N) weights of the mean pooling over the kept tokens (the first `image_tokens` are the image
    stream's), each row summing to 1 (0 where nothing is kept). "tokens" (the paper): every kept token
    alike; "streams": the image stream's mean and the text side's mean weighted alike, whatever their
    token counts (an empty stream gives its half to the other)."""
    if pooling == "tokens":
        return mask / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    streams = [mask[:, :image_tokens], mask[:, image_tokens:]]
    shares = [m / m.sum(dim=1, keepdim=True).clamp(min=1.0) for m in streams]
    present = sum((m.sum(dim=1, keepdim=True) > 0).to(mask.dtype) for m in streams).clamp(min=1.0)
    return torch.cat(shares, dim=1) / present


def attention_rollout(attentions: list[torch.Tensor], mask: torch.Tensor, image_tokens: int,
                      pooling: str = "tokens") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) through all blocks, read out for the pooled
    representation (`pool_weights`): importance of each image token, scaled to [0, 1] per sample. (B, 3n)."""
    b, n, _ = attentions[0].shape
    eye = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device)[None]
    rollout = eye.expand(b, n, n)
    for a in attentions:
        rollout = (0.5 * a + 0.5 * eye) @ rollout
    weights = pool_weights(mask, image_tokens, pooling)
    importance = (weights[:, :, None] * rollout).sum(dim=1)[:, :image_tokens]
    importance = importance * mask[:, :image_tokens]
    low = importance.min(dim=1, keepdim=True).values
    high = importance.max(dim=1, keepdim=True).values
    return (importance - low) / (high - low).clamp(min=1e-12)


class TMDLForExport(nn.Module):
    """The graph the runtime runs: probabilities, risk probabilities and the rollout of image tokens."""

    def __init__(self, model: TMDL) -> None:
        super().__init__()
        if model.config.view_fusion != "probability":
            raise ValueError(f"view_fusion={model.config.view_fusion} has no ONNX export yet: the runtime "
                             "scores views one by one and averages their probabilities")
        self.model = model

    def forward(self, images, text_states, text_mask, clinical, group_keep):
        logit, risk, attentions, mask = self.model(images, text_states, text_mask, clinical, group_keep,
                                                   return_attention=True)
        importance = attention_rollout(attentions, mask, self.model.config.image_tokens, self.model.config.pooling)
        return torch.sigmoid(logit)[:, None], risk.softmax(dim=-1), importance, logit[:, None]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dummy_inputs(config: TMDLConfig, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.zeros(batch, config.text_tokens)
    text_mask[:, :12] = 1.0
    return {
        "images": torch.rand(batch, 3, config.image_size, config.image_size, generator=g),
        "text_states": torch.randn(batch, config.text_tokens, config.text_dim, generator=g),
        "text_mask": text_mask,
        "clinical": torch.randn(batch, len(config.clinical_inputs), generator=g),
        "group_keep": torch.ones(batch, 4),
    }
