# The two commands a newcomer needs (see README): `make run` and `make test`. Both set themselves up.
.PHONY: setup run test test-fast

setup:
	./scripts/setup.sh

run: setup
	.venv/bin/llnm serve

test: setup
	./scripts/test-services.sh
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	.venv/bin/python -m pytest -m "not slow and not e2e" $(PYTEST_ARGS)
