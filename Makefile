# Everything a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
DATA_DIR ?= store_data
ENV_FILE ?= .env
PROXY_PORT ?= 8001

.PHONY: venv test store env_exports clean sample_content demo bench soak lint proxy

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11+" >&2; exit 1; }
	@test -w . || { echo "error: this checkout is read-only; clone it somewhere writable" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt || { \
	  echo "error: installing the requirements failed (see above). They come as wheels from PyPI;" >&2; \
	  echo "if pip had to build one from source, install a C compiler and Python headers" >&2; \
	  echo "(Debian: apt-get install build-essential python3-dev) and run make again." >&2; exit 1; }
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q

store: venv
	$(PY) -m local_store --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR) --env-file $(ENV_FILE)

# Prints shell exports of the .env the store writes: eval "$$(make -s env_exports)"
env_exports:
	@test -f $(ENV_FILE) || { echo "error: no $(ENV_FILE) here; start the store with 'make store' first" >&2; exit 1; }
	@sed -n 's/^\([A-Z0-9_]*\)=\(.*\)$$/export \1=\2/p' $(ENV_FILE)

sample_content: sample_content/hls_output.m3u8

sample_content/hls_output.m3u8: | $(STAMP)
	$(PY) sample_content.py --output-dir sample_content

demo: sample_content/hls_output.m3u8 | $(STAMP)
	$(PY) demo.py

bench: venv
	$(PY) bench/run_all.py $(BENCH_ARGS)

soak: venv
	SOAK_LONG=1 $(PY) -m pytest -q -m soak tests/test_soak.py

proxy: venv
	$(MAKE) -C authz_proxy run ENV_FILE=$(abspath $(ENV_FILE)) PROXY_PORT=$(PROXY_PORT)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(wildcard *.py)
	$(VENV)/bin/mypy --config-file authz_proxy/mypy.ini authz_proxy

clean:
	rm -rf $(VENV) $(DATA_DIR) sample_content demo_output .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/results.json bench/cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
