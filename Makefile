# Sluice: common targets. Everything here needs only Go.
GO        ?= go
BIN       := bin/sluice
PKGS      := ./...
FUZZTIME  ?= 60s
BENCHTIME ?= 2s
# The cells the targets in BENCHMARKS.md name, run BENCHRUNS times as
# separate processes so each run has engine and ceilings side by side.
BENCHKEY  := (Append|AppendNoDedup|CeilingFile|CeilingPebble)/batch=100$$/appenders=(16|64)$$
BENCHKEYTIME ?= 3s
BENCHRUNS ?= 3

.PHONY: build run test race fuzz bench lint clean

build:
	$(GO) build -o $(BIN) ./cmd/sluice

run: build
	./$(BIN) serve $(if $(CONFIG),--config $(CONFIG),)

# The test suite README.md names: unit, crash, model and corruption tests.
test:
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 10m $(PKGS)

race:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

# Long fuzzing runs, one target after another.
fuzz:
	$(GO) test ./fuzz -run '^$$' -fuzz '^FuzzIngestRequest$$' -fuzztime $(FUZZTIME)
	$(GO) test ./ingest/internal/jsonscan -run '^$$' -fuzz '^FuzzDocument$$' -fuzztime $(FUZZTIME)
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzFrameDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzEntryDecode$$' -fuzztime $(FUZZTIME)
	SLUICE_MODEL_SEEDS=2000 $(GO) test ./engine -run 'TestModel' -count=1 -timeout 60m

# Every benchmark once (about 3 minutes), then the key cells BENCHRUNS times
# (about 1 minute each): under 10 minutes on the 2-core machine. Results go to
# bench/out/; BENCHMARKS.md says how to read them.
bench:
	mkdir -p bench/out
	$(GO) test ./engine -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 30m 2>&1 | tee bench/out/engine.txt
	for i in $$(seq $(BENCHRUNS)); do \
		$(GO) test ./engine -run '^$$' -bench '$(BENCHKEY)' -benchtime $(BENCHKEYTIME) -count 1 -timeout 30m 2>&1; \
	done | tee bench/out/engine-key.txt
	@! grep -q '^FAIL' bench/out/engine.txt bench/out/engine-key.txt

lint:
	@test -z "$$(gofmt -l .)" || (gofmt -l . && exit 1)
	$(GO) vet $(PKGS)

clean:
	rm -rf bin data
