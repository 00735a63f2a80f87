# Two commands are all a newcomer needs: `make run` and `make test`.
# Both create .venv with the project installed (no other setup needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETTINGS ?= settings.py
# compat mode: a PEP 660 editable install would hide twisted/plugins from twistd.
INSTALL := $(PY) -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat

.PHONY: run test start stop bench clean install

# Debian and Raspberry Pi OS ship venv without pip (ensurepip) in a package
# of its own: say so, rather than leave a half-made .venv behind.
$(VENV)/.installed: setup.cfg pyproject.toml
	@echo "$(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "make: '$(PYTHON) -m venv' failed; on Debian or Raspberry Pi OS: sudo apt install python3-venv" >&2; \
	  exit 1; }
	$(INSTALL) -e .
	touch $@

# PiCloud-Client 4.0.1 (picloud-client-python, used by the real-client
# tests) pins websocket-client 0.32.0 and requests 2.8.1, which clash with
# selenium's and do not run on Python 3.11; its own code runs on the current
# ones (both already installed), so it is installed without its pins.
$(VENV)/.installed-test: $(VENV)/.installed Makefile
	$(INSTALL) -e '.[test]'
	$(INSTALL) --no-deps PiCloud-Client==4.0.1
	touch $@

# Outside programs the tests start themselves (on free loopback ports, with
# their files in the test's temp directory): a headless browser and its
# driver, a Redis server, an MQTT broker.  Debian's packages, installed only
# when missing (CI runs as root; elsewhere through sudo).
SYSTEM_COMMANDS := /usr/bin/chromium:chromium /usr/bin/chromedriver:chromium-driver \
	/usr/bin/redis-server:redis-server /usr/sbin/mosquitto:mosquitto /usr/bin/ss:iproute2
.PHONY: system-deps
system-deps:
	@missing=""; for pair in $(SYSTEM_COMMANDS); do \
	  [ -x "$${pair%%:*}" ] || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/twistd -n smartplug --settings $(SETTINGS)

test: $(VENV)/.installed-test system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m twisted.trial tests

start: $(VENV)/.installed
	$(VENV)/bin/twistd --pidfile twistd.pid --logfile twistd.log smartplug --settings $(SETTINGS)
	@echo "started: pid $$(cat twistd.pid), log in twistd.log; 'make stop' stops it"

# Stops the daemon and returns once it is gone (so 'make stop; make start'
# works); a pid file left by a crash is removed, and never used to signal
# a process that is not this server's twistd.
stop:
	@if [ ! -f twistd.pid ]; then echo "not running (no twistd.pid)"; exit 0; fi; \
	pid=$$(cat twistd.pid); \
	if [ ! -d "/proc/$$pid" ] || ! grep -q twistd "/proc/$$pid/cmdline" 2>/dev/null; then \
	  rm -f twistd.pid; echo "not running (stale twistd.pid removed)"; exit 0; \
	fi; \
	kill "$$pid"; \
	for i in $$(seq 1 120); do \
	  if [ ! -d "/proc/$$pid" ]; then echo "stopped"; exit 0; fi; \
	  sleep 0.5; \
	done; \
	echo "pid $$pid is still running 60 s after SIGTERM; see twistd.log" >&2; exit 1

bench: $(VENV)/.installed-test
	$(PY) bench/run.py

# The Autobahn|Testsuite cases (groups 1-7 and 10, by kosoku) against every
# WebSocket route of the real server: a table for the README (a few minutes).
.PHONY: conformance
conformance: $(VENV)/.installed-test
	$(PY) bench/conformance.py

# A consistent backup of STATE_DB and the settings file into backups/, safe
# while the server runs; restore with: $(PY) -m smartplug_backend restore FILE
.PHONY: backup
backup: $(VENV)/.installed
	$(PY) -m smartplug_backend backup --settings $(SETTINGS)

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp* .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
	find . -name dropin.cache -delete
