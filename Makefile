# `make run`: the relay on its built-in demo provider. `make test`: the whole test suite.
# Both create .venv/ in the checkout and install what they need (system packages too, as root).
VENV := .venv
PY ?= python3
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test test-container bench lint system-deps system-deps-container clean

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# ffmpeg makes the test/demo media and is the real client in tests; hdhomerun_config is SiliconDust's client;
# systemd-analyze checks deploy/relay.service; chromium + chromium-driver: the web page's tests run in a
# real (headless) browser, through selenium; xmllint (libxml2-utils) and tv_validate_file + xmltv.dtd
# (xmltv-util) check the guide; ip (iproute2) brings up the loopback of the network namespace the TCP
# 65001 tests run in; redis-server, haproxy and nginx are the cluster tests' ledger and fronts (started
# by the tests on their own ports).
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v hdhomerun_config >/dev/null || missing="$$missing hdhomerun-config"; \
	command -v xmllint >/dev/null || missing="$$missing libxml2-utils"; \
	[ -f /usr/share/xmltv/xmltv.dtd ] && command -v tv_validate_file >/dev/null || missing="$$missing xmltv-util"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	$(PY) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# podman builds and runs the Containerfile in `make test-container`, from a base mmdebstrap makes here
# (runc: crun refuses hybrid cgroups on some VMs). Minutes, so apart from `make test`.
system-deps-container:
	@missing=""; \
	for c in podman buildah mmdebstrap runc; do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

run: $(STAMP)
	$(VENV)/bin/relay demo

test: $(STAMP)
	$(VENV)/bin/ruff check relay tests bench
	$(VENV)/bin/pytest

test-container: $(STAMP)
	@$(MAKE) --no-print-directory system-deps-container
	$(VENV)/bin/pytest -m container tests/test_container.py

bench: $(STAMP)
	$(VENV)/bin/python -m bench.failover
	$(VENV)/bin/python -m bench.splice
	$(VENV)/bin/python -m bench.ui

lint: $(STAMP)
	$(VENV)/bin/ruff check relay tests bench
	$(VENV)/bin/ruff format --check relay tests bench

clean:
	rm -rf $(VENV) tests/.media .pytest_cache .ruff_cache
