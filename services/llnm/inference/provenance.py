"""Which model file a result names: the sha256 of each model's ONNX file, declared in its Triton config.

Every `model_repository/<name>/config.pbtxt` carries

    parameters { key: "llnm_sha256" value: { string_value: "<sha256 of 1/model.onnx>" } }

Triton hands its configs' parameters to any client (`get_model_config`), so a worker can ask Triton what
it serves and compare it with the model file it was built with; a result then names the model that was
really used (llnm.inference.triton_backend). The declaration is only as good as the repository it was
written into: `llnm model-hashes --write` writes it after a model file changes (llnm export and
llnm train-seg do it themselves), `llnm model-hashes --check` (and a test, and the chart's model init
container) fail when a file and its declaration disagree.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The config.pbtxt parameter that declares the model file's sha256.
PARAMETER = "llnm_sha256"
#: How many hex digits of the sha256 results carry (the SR's Contributing Equipment, summary.json, UIDs).
SHORT = 12

_DECLARATION = re.compile(
    r'parameters\s*:?\s*\{\s*key\s*:\s*"' + PARAMETER + r'"\s*value\s*:?\s*\{\s*string_value\s*:\s*"([^"]*)"\s*\}\s*\}')
_COMMENT = ("# sha256 of 1/model.onnx: workers compare it with their own copy before they use this model\n"
            "# (`llnm model-hashes --write` writes it; `llnm model-hashes --check` and the tests fail when stale)\n")


def model_file(repository: Path, model: str) -> Path:
    """The ONNX file of `model` (version 1, as Triton and the ONNX Runtime backend load it)."""
    return Path(repository) / model / "1" / "model.onnx"


def config_file(repository: Path, model: str) -> Path:
    return Path(repository) / model / "config.pbtxt"


_cache: dict[tuple[str, int, int], str] = {}
_cache_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks; remembered per (path, mtime, size): the text encoder is ~90 MB
    and a worker asks once per study."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _cache_lock:
        _cache[key] = value
    return value


def declared_in_text(config_text: str) -> str | None:
    """The llnm_sha256 a config.pbtxt text declares, or None."""
    found = _DECLARATION.search(config_text)
    return found.group(1) if found else None


def declared_in_config(config: dict[str, Any]) -> str | None:
    """The llnm_sha256 of a model config as Triton returns it (JSON: HTTP, or gRPC with as_json; the gRPC
    form may be wrapped in {"config": ...})."""
    config = config.get("config", config) if isinstance(config, dict) else {}
    value = (config.get("parameters") or {}).get(PARAMETER) or {}
    text = value.get("string_value") if isinstance(value, dict) else None
    return str(text) if text else None


def with_declaration(config_text: str, sha256: str) -> str:
    """`config_text` declaring `sha256`: the existing declaration replaced in place, or one appended."""
    line = f'parameters {{ key: "{PARAMETER}" value: {{ string_value: "{sha256}" }} }}'
    if _DECLARATION.search(config_text):
        return _DECLARATION.sub(line, config_text, count=1)
    return config_text.rstrip("\n") + "\n" + _COMMENT + line + "\n"


def repository_models(repository: Path) -> list[str]:
    """Models of a repository that have a config.pbtxt and a 1/model.onnx, by name."""
    return sorted(p.parent.name for p in Path(repository).glob("*/config.pbtxt")
                  if model_file(repository, p.parent.name).is_file())


@dataclass(frozen=True)
class Declaration:
    model: str
    declared: str | None  # what config.pbtxt says
    actual: str  # the sha256 of 1/model.onnx

    @property
    def ok(self) -> bool:
        return self.declared == self.actual


def check_repository(repository: Path, models: list[str] | None = None) -> list[Declaration]:
    """Each model's declared and actual sha256 (all models of the repository, or `models`)."""
    out = []
    for model in models or repository_models(repository):
        text = config_file(repository, model).read_text()
        out.append(Declaration(model, declared_in_text(text), file_sha256(model_file(repository, model))))
    return out


def write_repository(repository: Path, models: list[str] | None = None) -> list[Declaration]:
    """Declare each model file's sha256 in its config.pbtxt (written atomically; unchanged files are left
    alone). Returns the declarations as they were before."""
    before = check_repository(repository, models)
    for item in before:
        if item.ok:
            continue
        path = config_file(repository, item.model)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(with_declaration(path.read_text(), item.actual))
        os.replace(tmp, path)
    return before


def declare(repository: Path, model: str) -> str | None:
    """After a model file was written (llnm export, llnm train-seg): declare its sha256 in its config.pbtxt.
    Returns the sha256, or None when the model has no config.pbtxt yet."""
    if not config_file(repository, model).is_file() or not model_file(repository, model).is_file():
        return None
    return write_repository(repository, [model])[0].actual


def expected_sha256(repository: Path | None, model: str) -> tuple[str | None, str]:
    """What a worker expects Triton to serve for `model`: the sha256 of its own model file, else what its own
    config.pbtxt declares, else None (no local copy). Also says where the expectation comes from."""
    if repository is None:
        return None, "no local model repository"
    path = model_file(repository, model)
    if path.is_file():
        return file_sha256(path), str(path)
    config = config_file(repository, model)
    if config.is_file():
        declared = declared_in_text(config.read_text())
        if declared:
            return declared, str(config)
    return None, f"no {path}"
