# Tessera developer commands. `make run` and `make test` bootstrap a fresh machine by themselves.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml sdk/pyproject.toml requirements.lock scripts/k8s_tools.sh | cksum | cut -d' ' -f1)
ARGS   ?=
DEMO_Q ?= Mia has 12 shells. She finds 7 more. She gives 3. She buys 5 more. She loses 4. How many shells does Mia have now?

.PHONY: setup test lint bench sweep run demo train protos crd-schemas images image-gateway image-worker clean

# Container images (docker/): names and tags as helm/tessera/values.yaml's image defaults.
GATEWAY_IMAGE ?= tessera/gateway:0.1.0
WORKER_IMAGE  ?= tessera/worker:0.1.0-cuda

setup: $(STAMP)

$(STAMP): pyproject.toml sdk/pyproject.toml requirements.lock scripts/k8s_tools.sh
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]' -e ./sdk
	VENV=$(VENV) bash scripts/k8s_tools.sh  # helm, kubectl into $(VENV)/bin (tarball cached in $(VENV)/tools)
	@rm -f $(VENV)/.installed-* && touch $@

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m lab.bench text

sweep: setup
	$(PY) -m lab.bench text --sweep --problems 40

run: setup
	$(PY) -m services.stack $(ARGS)

demo: setup
	$(PY) -m models.d2f "$(DEMO_Q)"

protos: setup
	$(PY) scripts/gen_protos.py

# tests/k8s/schemas from the upstream CRDs (../shared/k8s-crds; CRDS=dir to point elsewhere)
crd-schemas: setup
	$(PY) scripts/crd_schemas.py $(if $(CRDS),--crds $(CRDS))

train: setup
	$(PY) -m lab.training

# Skipped, with the reason, where no container engine or base image is present (no registry to pull from).
images: image-gateway image-worker

image-gateway:
	@bash scripts/build_image.sh docker/gateway.Dockerfile $(GATEWAY_IMAGE)

image-worker:
	@bash scripts/build_image.sh docker/worker.Dockerfile $(WORKER_IMAGE)

clean:
	rm -rf $(VENV) bench-results .pytest_cache .ruff_cache
