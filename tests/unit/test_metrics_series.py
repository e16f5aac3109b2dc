"""Labelled counters whose label values are known up front are exported at 0 before the first event, so an
alert on `increase()` counts that first event and a "nothing happened" rule has a series to look at
(deploy/prometheus/alerts.yml; the promtool cases in tests/deploy/alerts_test.yml)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llnm.config import Settings
from llnm.observability import metrics
from llnm.worker.process import StudyWorker


def _exported() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    text = generate_latest(metrics.REGISTRY).decode()
    return {(s.name, tuple(sorted(s.labels.items()))) for f in text_string_to_metric_families(text)
            for s in f.samples}


def test_failures_completions_and_triton_errors_exist_before_the_first_one():
    exported = _exported()
    for kind in ("transient", "permanent"):
        assert ("llnm_studies_failed_total", (("kind", kind),)) in exported
    for outcome in ("queued", "ignored"):
        assert ("llnm_studies_completed_total", (("outcome", outcome),)) in exported
    for model in ("nodule_seg", "thyroid_seg", "text_encoder", "tmdl"):
        assert ("llnm_triton_errors_total", (("model", model),)) in exported
        assert ("llnm_triton_model_mismatches_total", (("model", model),)) in exported
    for name in ("llnm_studies_processed_total", "llnm_studies_dead_lettered_total", "llnm_enqueue_errors_total"):
        assert (name, ()) in exported  # unlabelled counters start at 0 by themselves


def test_listener_series_per_allowed_calling_ae_start_at_zero(tmp_path):
    from llnm.listener.app import Listener

    settings = Settings.from_env(environ={}, data_dir=tmp_path / "var", allowed_aes="SERIESTEST@10.0.0.5",
                                 metrics_port=0)
    Listener(settings, enqueue=lambda *args, **kwargs: None)  # the allow-list's titles and "other"
    for title in ("SERIESTEST", "other"):  # "other" may have counted in earlier tests of this process
        expected = (0.0,) if title == "SERIESTEST" else None
        for name, labels in (("llnm_associations_total", {"result": "rejected"}),
                             ("llnm_instances_received_total", {"status": "out_of_resources"})):
            value = metrics.REGISTRY.get_sample_value(name, {"calling_ae": title, **labels})
            assert value is not None and (expected is None or value in expected), (name, title, value)


def test_a_worker_starts_its_destination_series_and_says_which_backend_it_uses(tmp_path):
    settings = Settings.from_env(environ={}, data_dir=tmp_path / "var", destinations="SERIESPACS@pacs.test:104",
                                 inference_backend="triton", triton_url="grpc://triton.test:8001")
    StudyWorker(settings, backend=object())
    assert metrics.REGISTRY.get_sample_value(
        "llnm_objects_sent_total", {"destination": "SERIESPACS@pacs.test:104", "outcome": "failed"}) == 0.0
    assert metrics.REGISTRY.get_sample_value("llnm_inference_backend_info", {"backend": "triton"}) == 1.0
    assert metrics.REGISTRY.get_sample_value("llnm_inference_backend_info", {"backend": "onnxruntime"}) == 0.0
