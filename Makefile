# The two commands a newcomer needs:
#   make demo   - set up everything and run a small RLTrainingJob locally (CPU, small model, real GRPO)
#   make test   - set up everything (Python env, Kubernetes binaries, helm, Prometheus) and run all tests
.PHONY: demo test test-fast lint crd setup cluster-binaries tools

PYTEST_ARGS ?=

setup:
	hack/setup-python.sh

demo: setup
	.venv/bin/python examples/tiny/prepare.py
	.venv/bin/kuberl train examples/tiny/job.yaml
	.venv/bin/kuberl plot runs/tiny-grpo

cluster-binaries:
	hack/cluster/build.sh

tools:
	hack/install-tools.sh
	hack/fetch-helm.sh

test: setup cluster-binaries tools
	.venv/bin/ruff check .
	PYTHONFAULTHANDLER=1 .venv/bin/python -P hack/run-tests.py $(PYTEST_ARGS)

# Unit tests only: no control plane, no Prometheus.
test-fast: setup
	KUBERL_SKIP_CLUSTER=1 PYTHONFAULTHANDLER=1 .venv/bin/python -P hack/run-tests.py -m "not cluster and not slow" $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .

crd: setup
	.venv/bin/kuberl crd --write
