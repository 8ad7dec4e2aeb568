# Flotilla build and test entry points. `make test` is what CI runs.
GO       ?= go
BIN      := bin/flotilla
PKGS     := ./...
# What `flotilla version` reports: the release in VERSION, the commit (marked -dirty
# with uncommitted changes) and the commit's date (reproducible, unlike the clock's).
VERSION  ?= $(shell cat VERSION)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
DATE     ?= $(shell git log -1 --format=%cI 2>/dev/null)
LDFLAGS  := -X github.com/flotilla-relay/flotilla/internal/buildinfo.version=$(VERSION) \
            -X github.com/flotilla-relay/flotilla/internal/buildinfo.commit=$(COMMIT) \
            -X github.com/flotilla-relay/flotilla/internal/buildinfo.date=$(DATE)

.PHONY: build test unit e2e bench fuzz proto lint demo clean tools deploy-test chaos

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/flotilla

# Installs MariaDB, Node.js and Ansible (Debian packages) when missing, builds, runs every test
# (unit, fuzz seeds, end-to-end against real servers, the Ansible deployment) and prints a
# summary line.
test: build
	@scripts/ensure-mariadb.sh
	@scripts/ensure-node.sh
	@scripts/ensure-ansible.sh
	@FLOTILLA_BIN=$(CURDIR)/$(BIN) scripts/gotest.sh $(PKGS)

# The Ansible deployment on this machine (lint, then three nodes, an upstream, a
# replica and a rolling upgrade across versions); `make test` runs it too.
deploy-test: build
	@scripts/ensure-mariadb.sh
	@scripts/ensure-ansible.sh
	@FLOTILLA_BIN=$(CURDIR)/$(BIN) deploy/ansible/tests/run-local.sh

# The fault-injection suite's long form (test/chaos; `make test` runs a short one):
# CHAOS_DURATION of faults, CHAOS_SEED to replay a run. The history is kept.
CHAOS_DURATION ?= 30m
chaos: build
	@scripts/ensure-mariadb.sh
	FLOTILLA_BIN=$(CURDIR)/$(BIN) FLOTILLA_CHAOS_DURATION=$(CHAOS_DURATION) FLOTILLA_CHAOS_SEED=$(CHAOS_SEED) FLOTILLA_CHAOS_KEEP=1 \
		$(GO) test -count=1 -v -timeout 0 -run TestChaos ./test/chaos/

bench: build
	@scripts/ensure-mariadb.sh
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./test/bench/...

# Runs every fuzz target with -fuzz for FUZZTIME each (CI uses a short time).
FUZZTIME ?= 30s
fuzz:
	@FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

proto:
	@scripts/proto.sh

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@test -x "$$($(GO) env GOPATH)/bin/staticcheck" || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.6.1
	"$$($(GO) env GOPATH)/bin/staticcheck" $(PKGS)

demo: build
	@scripts/ensure-mariadb.sh
	$(GO) run ./test/demo -flotilla $(BIN) $(DEMO_ARGS)

clean:
	rm -rf bin .demo
