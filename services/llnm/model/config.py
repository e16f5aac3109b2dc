"""TMDL sizes: one dataclass, presets by name. The same code runs every preset.

- paper:   the sizes of Shen et al. 2025 (hidden 768, 12 heads of d_k 64, 4 bidirectional + 12
           self-attention blocks, 224 x 224 feature images in 16 x 16 patches), its x_s (length and
           width) and its unscaled aspect (x_l kept square); for a GPU.
- compact: fast on 2 CPU cores; what the worker ships (model_repository/tmdl/1/model.onnx).
- tiny:    for tests only (seconds to train).

`view_fusion` says where the two views of a study (transverse, longitudinal) meet:
- "probability" (default, what the shipped model and the runtime do): each view is scored alone and
  the study probability is the mean of the per-view probabilities;
- "pooled" (the paper): each view runs through the backbone with a learned orientation embedding on
  its image tokens, the pooled per-view representations are averaged over the views present, and
  the one two-layer head scores the study (no ONNX export yet).

`shape_input` says what the shape token x_s projects (both: one token, as the paper's Tokens_s):
- "ratio" (default, the shipped model): log of the anteroposterior / transverse extent, the
  taller-than-wide ratio; absolute size is then not an input at all (x_t is rescaled to the nodule);
- "length_width" (the paper: "calculated the length and width to obtain the shape feature x_s"):
  log of the nodule's length and width in mm, two numbers projected linearly onto the one token.

`image_sampling` says how the texture and margin images are resampled from the frame:
- "point" (default, the shipped model): bilinear interpolation at the output pixel centres; a 48 px
  image taken from a 300-500 px nodule then aliases the speckle;
- "area": the frame low-pass filtered to the output pixel size first (Gaussian, sigma (zoom - 1) / 2),
  so coarse internal texture survives and speckle averages out.
- "energy": as "area", but x_t shows the texture's local contrast instead of the grey: the absolute
  band-pass of the frame between 0.4 and 1.2 mm (`llnm.features.extract.texture_energy`), so that a
  patch token's linear projection reads how coarse the internal texture is (the grey's level is x_e).

`location_input` says what the location group reads:
- "map" (default, the shipped model and the paper): the CPDT map x_l only; the capsule distance and
  the place in the lobe must be read from its pixels;
- "map_and_position" (a measured deviation, issue 15): also a fifth scalar token x_p, one linear
  projection of the capsule distance (log mm) and the nodule centroid's place in the gland box
  (vertical, horizontal), the numbers the product already measures and reports; occluded with the
  location group.

`pooling` says how the tokens are pooled before the head:
- "tokens" (default, the shipped model and the paper): the mean over every kept token. The paper's
  sizes give the image stream 588 tokens beside m + 4 = 54 on the text side; the compact preset with a
  150-token report gives it 48 beside 154, so the report dominates the pooled vector;
- "streams" (a measured deviation, issue 15): the mean of the image stream's mean and the text side's
  mean, each stream weighted alike whatever its token count.
`image_stem` says how each feature image becomes tokens:
- "patch" (default, the shipped model and the paper): one linear projection of each patch (a strided
  convolution), as ViT;
- "conv" (a measured deviation, issue 15): two 3 x 3 convolutions of stride 2 (GELU) before a patch
  projection of patch_size / 4, the "early convolutions" of Xiao et al. 2021: local texture (grain,
  foci, an irregular edge) is read before the patches are mixed, which a linear projection of a patch
  cannot do. The same tokens, the same graph outputs.
`location_aspect` says how x_l frames the gland:
- "stretch" (default, the shipped model): the box of gland and nodule resampled onto the square image,
  so a long thin lobe is squeezed and the nodule's shape and place in it are distorted;
- "keep" (the paper: "to preserve the morphology of the nodules (particularly the aspect ratio), we did
  not use any scaling methods"): a square box around it, the same scale along both axes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

#: the token groups whose contribution is reported (and can be occluded at run time)
GROUPS = ("location", "morphology", "report", "demographics")
#: channel order of the feature images
IMAGE_FEATURES = ("x_l", "x_t", "x_m")
#: order of the scalar tokens
CLINICAL_FEATURES = ("sex", "age", "x_e", "x_s")
#: how the views of a study are combined (see the module docstring)
VIEW_FUSIONS = ("probability", "pooled")
#: view orientations, in the order of the orientation embedding's rows (pooled fusion)
ORIENTATIONS = ("transverse", "longitudinal", "unknown")
#: what the shape token x_s reads (see the module docstring)
SHAPE_INPUTS = ("ratio", "length_width")
#: how x_t and x_m are resampled (see the module docstring)
IMAGE_SAMPLINGS = ("point", "area", "energy")
#: how x_l frames the gland (see the module docstring)
LOCATION_ASPECTS = ("stretch", "keep")
#: what the location group reads (see the module docstring)
LOCATION_INPUTS = ("map", "map_and_position")
#: how the tokens are pooled before the head (see the module docstring)
POOLINGS = ("tokens", "streams")
#: how each feature image becomes tokens (see the module docstring)
IMAGE_STEMS = ("patch", "conv")
#: the numbers of the position token x_p (location_input "map_and_position")
POSITION_INPUTS = ("x_p_capsule", "x_p_vertical", "x_p_horizontal")


@dataclass(frozen=True)
class TMDLConfig:
    name: str = "compact"
    image_size: int = 48  # each feature image is image_size x image_size
    patch_size: int = 12  # -> n = (image_size / patch_size)^2 tokens per feature image, 3n in all
    hidden: int = 128
    heads: int = 4  # d_k = hidden / heads
    bi_blocks: int = 2  # bidirectional image <-> text blocks
    self_blocks: int = 1  # self-attention blocks over the concatenated tokens
    mlp_ratio: float = 4.0
    text_tokens: int = 50  # m: report tokens (truncated / padded, with a mask)
    text_dim: int = 384  # width of the text encoder's token states
    alpha: float = 1.0  # weight a of the cross-attention terms
    dropout: float = 0.1
    risk_levels: int = 3
    view_fusion: str = "probability"  # VIEW_FUSIONS; absent from older preset.json files
    shape_input: str = "ratio"  # SHAPE_INPUTS; absent from older preset.json files
    image_sampling: str = "point"  # IMAGE_SAMPLINGS; absent from older preset.json files
    location_aspect: str = "stretch"  # LOCATION_ASPECTS; absent from older preset.json files
    location_input: str = "map"  # LOCATION_INPUTS; absent from older preset.json files
    pooling: str = "tokens"  # POOLINGS; absent from older preset.json files
    image_stem: str = "patch"  # IMAGE_STEMS; absent from older preset.json files

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        for name, allowed in (("view_fusion", VIEW_FUSIONS), ("shape_input", SHAPE_INPUTS),
                              ("image_sampling", IMAGE_SAMPLINGS), ("location_aspect", LOCATION_ASPECTS),
                              ("location_input", LOCATION_INPUTS), ("pooling", POOLINGS),
                              ("image_stem", IMAGE_STEMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r}: choose from {allowed}")
        if self.image_stem == "conv" and self.patch_size % 4:
            raise ValueError(f"image_stem 'conv' halves the image twice: patch_size {self.patch_size} must be a "
                             "multiple of 4")

    def feature_options(self) -> dict[str, object]:
        """The keyword arguments of `llnm.features.extract_features` this model was trained with."""
        return {"size": self.image_size, "sampling": self.image_sampling, "location_aspect": self.location_aspect}

    @property
    def clinical_inputs(self) -> tuple[str, ...]:
        """The numbers of the `clinical` input, in order (`clinical_token_index` says which scalar
        token each one projects onto: x_s from one or two, x_p from three)."""
        shape = ("x_s_length", "x_s_width") if self.shape_input == "length_width" else ("x_s",)
        position = POSITION_INPUTS if self.location_input == "map_and_position" else ()
        return ("sex", "age", "x_e") + shape + position

    @property
    def scalar_tokens(self) -> tuple[str, ...]:
        """The scalar tokens after the report on the text side, in order."""
        return CLINICAL_FEATURES + (("x_p",) if self.location_input == "map_and_position" else ())

    @property
    def clinical_token_index(self) -> tuple[int, ...]:
        """For each of `clinical_inputs`, the index of the scalar token it projects onto."""
        return tuple(self.scalar_tokens.index(name if name in self.scalar_tokens else name[:3])
                     for name in self.clinical_inputs)

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def image_tokens(self) -> int:
        return 3 * self.tokens_per_image

    @property
    def text_side_tokens(self) -> int:
        return self.text_tokens + len(self.scalar_tokens)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TMDLConfig":
        """Fields missing from older files take their defaults (view_fusion "probability", shape_input
        "ratio", image_sampling "point", location_aspect "stretch", location_input "map", pooling
        "tokens", image_stem "patch": what those models were trained with)."""
        return cls(**json.loads(text))

    @classmethod
    def load(cls, path: Path) -> "TMDLConfig":
        return cls.from_json(Path(path).read_text())


PRESETS: dict[str, TMDLConfig] = {
    "paper": TMDLConfig(name="paper", image_size=224, patch_size=16, hidden=768, heads=12,
                        bi_blocks=4, self_blocks=12, shape_input="length_width", location_aspect="keep"),
    "compact": TMDLConfig(name="compact"),
    "tiny": TMDLConfig(name="tiny", image_size=32, patch_size=8, hidden=32, heads=2, bi_blocks=1,
                       self_blocks=1, mlp_ratio=2.0),
}


def preset(name: str, **overrides: object) -> TMDLConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


#: written by `llnm export` beside the served ONNX file: the configuration the model was trained with
SERVED_CONFIG = Path("tmdl") / "1" / "preset.json"


def served_config(model_repository: Path, fallback: str = "compact") -> TMDLConfig:
    """The TMDL configuration of the model a repository serves: its `tmdl/1/preset.json` (what the
    model was trained with: report window, x_s, sampling; a retrained model carries its own), or the
    preset named `fallback` (LLNM_PRESET) for a repository exported before the file existed."""
    path = Path(model_repository) / SERVED_CONFIG
    return TMDLConfig.load(path) if path.is_file() else preset(fallback)
