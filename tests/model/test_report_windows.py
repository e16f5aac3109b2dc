"""Report windows: a model may read more than the paper's m = 50 report tokens (text_tokens a multiple of
50); the report is then cut into consecutive 50-token windows that the one 50-token text encoder encodes
one by one. The first window must be exactly today's truncated report."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from llnm.config import REPO_ROOT
from llnm.inference.onnxruntime_backend import OnnxRuntimeBackend
from llnm.text.encoder import encode_reports, tokenizer_path
from llnm.text.tokenize import MAX_TOKENS, ReportTokenizer, impression_first

LONG = ("Right lobe, transverse and longitudinal views. A solid hypoechoic nodule in the upper third, "
        "measuring 14 x 11 x 9 mm, taller than wide, with irregular, lobulated margins and punctate "
        "echogenic foci. No halo. The capsule appears intact on the anterior surface; the posterior "
        "surface is not clearly seen. Internal vascularity is increased on colour Doppler. A suspicious "
        "central compartment node is noted.\nImpression: TI-RADS 5, highly suspicious nodule; fine "
        "needle aspiration recommended.")
SHORT = "Cystic nodule."


@pytest.fixture(scope="module")
def encoder_repo():
    repo = REPO_ROOT / "model_repository"
    if not tokenizer_path(repo).is_file():
        from llnm.text.export import export_text_encoder

        export_text_encoder(repo / "text_encoder" / "1")
    return repo


def test_windows_continue_the_report_where_the_first_window_stops(encoder_repo):
    tok = ReportTokenizer(tokenizer_path(encoder_repo))
    one = tok([LONG, SHORT, ""])
    three = tok([LONG, SHORT, ""], windows=3)
    assert three["input_ids"].shape == (9, MAX_TOKENS)
    np.testing.assert_array_equal(three["input_ids"][::3], one["input_ids"])  # window 0 = the truncation
    np.testing.assert_array_equal(three["attention_mask"][::3], one["attention_mask"])
    raw = Tokenizer.from_file(str(tokenizer_path(encoder_repo)))
    raw.no_truncation()
    raw.no_padding()
    full = raw.encode(impression_first(LONG), add_special_tokens=False)
    got = []
    for w in range(3):
        row, keep = three["input_ids"][w], three["attention_mask"][w].astype(bool)
        assert row[keep][0] == one["input_ids"][0][0]  # each window framed by [CLS] ... [SEP]
        got += list(row[keep][1:-1])
    assert got == full.ids and 2 * MAX_TOKENS < len(full.ids) <= 3 * (MAX_TOKENS - 2)  # nothing lost or repeated
    assert not three["attention_mask"][4:6].any()  # the short report fills one window only
    assert not three["attention_mask"][6:].any()  # no report: no window
    with pytest.raises(ValueError):
        tok([LONG], windows=0)


def test_encoded_windows_lie_end_to_end(encoder_repo):
    backend = OnnxRuntimeBackend(encoder_repo, threads=1)
    tok = ReportTokenizer(tokenizer_path(encoder_repo))
    states1, mask1 = encode_reports(backend, tok, [LONG, SHORT])
    states3, mask3 = encode_reports(backend, tok, [LONG, SHORT], tokens=3 * MAX_TOKENS)
    assert states3.shape == (2, 150, states1.shape[-1]) and mask3.shape == (2, 150)
    np.testing.assert_allclose(states3[:, :MAX_TOKENS], states1, atol=1e-5)
    np.testing.assert_array_equal(mask3[:, :MAX_TOKENS], mask1)
    assert mask3[0, MAX_TOKENS:].sum() > 0 and mask3[1, MAX_TOKENS:].sum() == 0
    with pytest.raises(ValueError):
        encode_reports(backend, tok, [LONG], tokens=80)


def _sr_item(value_type: str, code: str, meaning: str, text: str | None = None, children=()):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", value_type
    name = Dataset()
    name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = code, "DCM", meaning
    item.ConceptNameCodeSequence = [name]
    if text is not None:
        item.TextValue = text
    if children:
        item.ContentSequence = list(children)
    return item


@pytest.mark.parametrize("layout", ["sections", "flat"])
def test_an_impression_of_several_lines_or_items_goes_first_whole(layout):
    """A real report's impression is often numbered lines, in one TEXT item with line breaks or in
    several TEXT items: all of it goes first (split line by line, only its last line went first and the
    rest fell beyond the tokens read)."""
    from pydicom.dataset import Dataset

    from llnm.dicom.patient import sr_text

    findings = ["Right lobe: solid hypoechoic nodule, 14 x 11 mm.", "No halo."]
    impression = ["1. TI-RADS 5 nodule of the right lobe, abutting the capsule, extrathyroidal extension "
                  "suspected.", "2. FNA recommended."]
    ds = Dataset()
    if layout == "sections":
        ds.ContentSequence = [
            _sr_item("CONTAINER", "121070", "Findings", children=[_sr_item("TEXT", "121071", "Finding", t)
                                                                  for t in findings]),
            _sr_item("CONTAINER", "121072", "Impressions",
                     children=[_sr_item("TEXT", "121073", "Impression", "\n".join(impression))])]
    else:
        ds.ContentSequence = ([_sr_item("TEXT", "121071", "Finding", t) for t in findings]
                              + [_sr_item("TEXT", "121073", "Impression", t) for t in impression])
    text = impression_first(sr_text(ds))
    assert text.startswith(" ".join(impression)) and text.endswith(" ".join(findings))


@pytest.mark.parametrize("text", ["", "   \n ", "\x00\x00", "\u200b\u200b", "\x07\t"])
def test_a_report_of_nothing_visible_is_no_report(text):
    from llnm.text.tokenize import has_text

    assert not has_text(text) and has_text("TI-RADS 4") and has_text("\u7532\u72b6\u817a")
