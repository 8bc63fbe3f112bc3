# edgeship: `make demo` and `make test` each do their own set-up on a fresh machine.
# Installs go into .venv/ (git-ignored); a stamp keyed on pyproject.toml makes a
# second run skip them.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
EDGESHIP := $(VENV)/bin/edgeship
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
DIGITS := examples/digits/build
DEMO := build/demo
DEMO_BOARDS := emu-pi,emu-mcu
# Gates a real board keeps. local runs the host's own LiteRT kernels: its outputs are the host
# reference's bit for bit, so 100 % agreement. Another runtime (tflite-runtime on a Pi, TFLite
# Micro) rounds int8 differently on some samples: at least 98 % agreement and an accuracy a few
# points under the host's (about 98 %) hold there (docs/results.md, "Agreement with the host").
LOCAL_GATE := --min-agreement 100
BOARD_GATE := --min-agreement 98 --min-accuracy 95

.PHONY: demo test lint install clean apt-tools apt-demo

$(VENV)/bin/python:
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { apt-get update && apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[host,convert,dev,micro]'
	rm -f $(VENV)/.installed-* && touch $@

# System tools the transport tests drive for real: OpenSSH's sshd and socat. Only `test`
# needs them; the check is a stat when they are installed, so no stamp file is kept.
# Debian packages: the emulated boards need sshd and qemu (demo and tests); the tests also
# use socat and headless Chromium (the report test). Installed only when missing.
APT_DEMO := /usr/sbin/sshd /usr/bin/qemu-aarch64-static
APT_TEST := $(APT_DEMO) /usr/bin/socat /usr/bin/chromium

apt-demo:
	@missing=; for f in $(APT_DEMO); do [ -x $$f ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing openssh-server and qemu-user-static (the emulated boards)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server qemu-user-static; \
	fi

apt-tools:
	@missing=; for f in $(APT_TEST); do [ -x $$f ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing openssh-server, qemu-user-static, socat and chromium (transport, emulated-board and report tests)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server qemu-user-static socat chromium; \
	fi

install: $(STAMP)

# A board's environment: numpy and LiteRT only, no TensorFlow (tests run the agent zipapp in it).
AGENT_VENV := .venv-agent
$(AGENT_VENV)/.installed: | $(VENV)/bin/python
	$(PYTHON) -m venv $(AGENT_VENV)
	$(AGENT_VENV)/bin/python -m pip install --quiet 'numpy>=1.21' 'ai-edge-litert>=2.3,<2.4'
	touch $@

$(DIGITS)/digits.keras: examples/digits/train.py | $(STAMP)
	$(PY) examples/digits/train.py --out $(DIGITS)

demo: $(STAMP) apt-demo $(DIGITS)/digits.keras
	$(EDGESHIP) convert $(DIGITS)/digits.keras --recipe int8 --calib $(DIGITS)/train.npz \
		--eval $(DIGITS)/test.npz --out $(DEMO)/digits-int8 --force
	$(EDGESHIP) convert $(DIGITS)/digits.keras --recipe float32 --eval $(DIGITS)/test.npz \
		--out $(DEMO)/digits-float32 --force -q
	$(EDGESHIP) push $(DEMO)/digits-int8 --board local
	$(EDGESHIP) eval $(DEMO)/digits-int8 --board local --data $(DIGITS)/test.npz $(LOCAL_GATE) \
		--results-dir $(DEMO)/results
	$(EDGESHIP) bench $(DEMO)/digits-int8 --board local --runs 500 --results-dir $(DEMO)/results
	$(EDGESHIP) eval $(DEMO)/digits-int8 --board $(DEMO_BOARDS) --data $(DIGITS)/test.npz $(BOARD_GATE) \
		--results-dir $(DEMO)/results
	$(EDGESHIP) eval $(DEMO)/digits-float32 --board local,emu-pi --data $(DIGITS)/test.npz $(BOARD_GATE) \
		--results-dir $(DEMO)/results
	$(EDGESHIP) bench $(DEMO)/digits-float32 --board local --runs 500 --results-dir $(DEMO)/results
	$(EDGESHIP) report $(DEMO)/results --html $(DEMO)/report.html --markdown $(DEMO)/report.md
	@echo "report: $(CURDIR)/$(DEMO)/report.html"

# A real external TFLite delegate for the delegate tests (tests/test_delegates.py): built with the
# system C compiler from one C file that declares the TFLite C delegate ABI itself.
CC ?= cc
TEST_DELEGATE := build/test-delegate/libedgeship_test_delegate.so
$(TEST_DELEGATE): tests/native/edgeship_test_delegate.c
	@mkdir -p $(@D)
	$(CC) -std=c11 -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $<

lint: $(STAMP)
	$(VENV)/bin/ruff check sdk converters device_agent tests bench examples tools edgeship/__init__.py
	$(VENV)/bin/mypy

test: $(STAMP) apt-tools $(AGENT_VENV)/.installed $(TEST_DELEGATE) lint
	$(VENV)/bin/pytest -q

# The fast tier (docs/testing.md): no model training or conversion, no qemu board; no lint.
.PHONY: test-fast
test-fast: $(STAMP) apt-tools $(AGENT_VENV)/.installed $(TEST_DELEGATE)
	$(VENV)/bin/pytest -q -m "not slow"

clean:
	rm -rf build $(DIGITS) $(AGENT_VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache
