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

# Scenario runs of the real binary (cmd/sluice-bench): SCENARIOS, SCENARIO_FLAGS
# (e.g. --repeat 3, --outage 10s, --perf).
SCENARIOS ?= all
SCENARIO_FLAGS ?=

.PHONY: build run test race fuzz mutate bench bench-engine bench-scenarios bench-kafka bench-quick bench-report lint clean

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
	SLUICE_SIM_SEEDS=2000 $(GO) test ./fuzz -run '^TestSimulationSeeds$$' -count=1 -timeout 60m -v
	SLUICE_SIM_META_SEEDS=100 $(GO) test ./fuzz -run '^TestSimulationMetamorphic$$' -count=1 -timeout 60m
	$(GO) test ./fuzz -run '^$$' -fuzz '^FuzzSimulation$$' -fuzztime $(FUZZTIME)

# Plants known bugs one at a time in a copy of HEAD and reports which the
# tests catch (fuzz/mutate); not in CI: a package's tests run once per bug.
mutate:
	$(GO) run ./fuzz/mutate

# The engine benchmarks (every benchmark once, about 3 minutes, then the key
# cells BENCHRUNS times, about 1 minute each), then every scenario against
# the real binary once (about 8 minutes) and the report into BENCHMARKS.md:
# about 13 minutes on the 2-core machine. Results go to bench/out/;
# BENCHMARKS.md says how to read them.
bench: bench-engine bench-scenarios bench-kafka

bench-engine:
	mkdir -p bench/out
	$(GO) test ./engine -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 30m 2>&1 | tee bench/out/engine.txt
	for i in $$(seq $(BENCHRUNS)); do \
		$(GO) test ./engine -run '^$$' -bench '$(BENCHKEY)' -benchtime $(BENCHKEYTIME) -count 1 -timeout 30m 2>&1; \
	done | tee bench/out/engine-key.txt
	@! grep -q '^FAIL' bench/out/engine.txt bench/out/engine-key.txt

# The Kafka destination beside its ceiling (kgo alone, same settings) into
# kfake, 3 runs of every cell: about 7 minutes (BENCHMARKS.md, Kafka).
bench-kafka:
	mkdir -p bench/out
	$(GO) test ./router/kafka -run '^$$' -bench . -benchtime 200000x -count 3 -timeout 30m 2>&1 | tee bench/out/kafka.txt
	@! grep -q '^FAIL' bench/out/kafka.txt

bench-scenarios:
	$(GO) run ./cmd/sluice-bench run $(SCENARIO_FLAGS) $(SCENARIOS); status=$$?; \
		$(GO) run ./cmd/sluice-bench report; exit $$status

# Every scenario, short (about a minute and a half): a smoke test of the
# harness and of the checks, not figures to quote.
bench-quick:
	$(GO) run ./cmd/sluice-bench run --quick --out bench/out/quick $(SCENARIO_FLAGS) $(SCENARIOS)

bench-report:
	$(GO) run ./cmd/sluice-bench report

# The nats destination into the machine's nats-server beside nats.go alone
# (BENCHMARKS.md, "NATS JetStream destination"): about 3 minutes.
bench-nats:
	mkdir -p bench/out
	$(GO) test ./router/natsdest -run '^$$' -bench . -benchtime 3x -timeout 30m 2>&1 | tee bench/out/nats.txt
	@! grep -q '^FAIL' bench/out/nats.txt

lint:
	@test -z "$$(gofmt -l .)" || (gofmt -l . && exit 1)
	$(GO) vet $(PKGS)

clean:
	rm -rf bin data
