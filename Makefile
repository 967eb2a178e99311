# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv test run readme bench image image-test clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

# Every test file in a pytest of its own, two at a time, on one PostgreSQL: a file that passes
# only after another one fails here (scripts/each_test_alone.py). PYTEST_ARGS go to each.
test: venv
	$(VENV)/bin/ruff check --quiet .
	PYTEST_ARGS="$(PYTEST_ARGS)" $(PY) -m scripts.each_test_alone $(TEST_FILES)

run: venv
	@exec $(PY) -m scripts.run_local

readme: venv
	$(PY) -m scripts.readme

bench: venv
	$(PY) -m bench.startup

# The container image, built from the Dockerfile with buildah (README, Deployment), tagged with
# the version as the Compose files and Kubernetes manifests name it.
VERSION := $(shell sed -n 's/^VERSION = "\(.*\)"$$/\1/p' server/core/__init__.py)
IMAGE ?= localhost/ayon-server:$(VERSION)

image: venv
	PYTHON=$(PY) scripts/build-image.sh $(IMAGE)

# Black-box tests of the real image under podman (tests/image); not part of `make test`.
image-test: image
	AYON_TEST_IMAGE=$(IMAGE) $(PY) -m pytest -v -s -p no:cacheprovider tests/image

clean:
	rm -rf $(VENV) .run
