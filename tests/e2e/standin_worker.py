"""`llnm worker` with the pipeline replaced by the test stand-in (tests/service/support.py), for the
service mechanics while trained models are missing. Everything else is the real worker: Celery on Redis,
the outbox, C-STORE to Orthanc, metrics. LLNM_TEST_STANDIN_DELAY_S makes each study take that long."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

import support  # noqa: E402

import llnm.service  # noqa: E402
import llnm.worker.process  # noqa: E402
from llnm.cli import main  # noqa: E402

llnm.worker.process._default_predict = lambda: (support.standin_predict, support.standin_write_output)
llnm.service.MODELS = ()  # the stand-in needs no model for readiness

sys.exit(main(["worker"]))
