"""The Celery side against the real Redis: what the listener puts on the queue, and how it is configured."""

from __future__ import annotations

import json
import uuid

import pytest

from llnm.config import Settings
from llnm.worker.celery_app import PROCESS_TASK, CeleryQueue, create_app, queue_depth, queue_key


def _redis():
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)
    try:
        client.ping()
    except Exception:
        pytest.skip("needs Redis on 127.0.0.1:6379 (scripts/test-services.sh starts it)")
    return client


@pytest.fixture
def settings():
    client = _redis()
    prefix = f"llnm-test-{uuid.uuid4().hex[:10]}:"
    yield Settings(broker_url="redis://127.0.0.1:6379/0", broker_key_prefix=prefix, queue_name="llnm")
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def test_listener_enqueues_one_json_task_on_its_prefixed_queue(settings):
    queue = CeleryQueue(settings)
    assert queue_depth(settings) == 0
    task_id = queue.enqueue("1.2.3.4")
    assert task_id and queue_depth(settings) == 1
    raw = _redis().lindex(queue_key(settings), 0)
    message = json.loads(raw)
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == PROCESS_TASK and message["headers"]["id"] == task_id
    import base64

    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == ["1.2.3.4", 1] and kwargs == {}


def test_celery_is_configured_for_at_least_once_json_tasks(settings):
    conf = create_app(settings).conf
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == settings.broker_visibility_timeout_s
    assert conf.broker_transport_options["global_keyprefix"] == settings.broker_key_prefix
    with pytest.raises(ValueError, match="LLNM_BROKER_URL"):
        create_app(Settings())


@pytest.mark.parametrize("command", ["listener", "worker"])
def test_distributed_commands_need_a_broker(command, monkeypatch, tmp_path):
    from llnm.cli import main

    monkeypatch.delenv("LLNM_BROKER_URL", raising=False)
    monkeypatch.setenv("LLNM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LLNM_METRICS_PORT", "0")
    assert main([command]) == 2


def test_model_calls_are_timed_per_stage_whatever_the_backend():
    import numpy as np

    from llnm.observability import metrics
    from llnm.worker.process import TimedBackend

    class Echo:
        model_repository = "/models"

        def infer(self, model, inputs):
            return dict(inputs)

        def has_model(self, model):
            return True

        def model_version(self, model):
            return "v"

    def count(stage: str) -> float:
        return metrics.REGISTRY.get_sample_value("llnm_stage_seconds_count", {"stage": stage}) or 0.0

    backend = TimedBackend(Echo(), "onnxruntime")
    before = {s: count(s) for s in ("segmentation", "tmdl", "text")}
    for model in ("nodule_seg", "thyroid_seg", "tmdl", "text_encoder"):
        assert backend.infer(model, {"x": np.zeros(1)})["x"].shape == (1,)
    assert count("segmentation") - before["segmentation"] == 2
    assert count("tmdl") - before["tmdl"] == 1 and count("text") - before["text"] == 1
    assert backend.model_repository == "/models"
