# make demo: set up and run the demo.  make test: set up and run the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.difrep-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: setup test demo bench pretrain study fashion-mnist clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

fashion-mnist:
	@if [ ! -f $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu)" >&2; exit 1; \
	  fi; \
	fi

# the reference tests (guided-diffusion's own code) must fail, not skip, when the reference is missing
test: $(STAMP) fashion-mnist
	DIFREP_REQUIRE_REFERENCE=1 $(PY) -m pytest -q

demo: $(STAMP) fashion-mnist
	$(VENV)/bin/difrep demo

bench: $(STAMP)
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/pretrain.py

# retrain the shipped model (10,000 steps, about 2.5 hours on a 2-core CPU; resumes); weights in runs/pretrain_fashion_mnist/
pretrain: $(STAMP) fashion-mnist
	$(VENV)/bin/difrep pretrain configs/pretrain_fashion_mnist.yaml

# the full Fashion-MNIST study (hours on a CPU; rerun to continue where it stopped), docs/study.md. Its results
# (not its caches or weights) are committed in studies/fashion_mnist, from which the next call continues
study: $(STAMP) fashion-mnist
	$(VENV)/bin/difrep study configs/studies/fashion_mnist.yaml

clean:
	rm -rf $(VENV) .pytest_cache
