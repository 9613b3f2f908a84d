package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Env describes where a result was measured.
type Env struct {
	Commit    string `json:"commit"`
	Dirty     bool   `json:"dirty"`
	GoVersion string `json:"go_version"`
	CPUModel  string `json:"cpu_model"`
	Cores     int    `json:"cores"`
	LoadAvg   string `json:"load_avg"` // /proc/loadavg at the start
	// SluiceBinary is the first 12 hex digits of the SHA-256 of the sluice
	// binary measured (results with equal values measured the same code).
	SluiceBinary string `json:"sluice_binary,omitempty"`
}

// ReadEnv collects Env; dir is inside the git work tree.
func ReadEnv(dir string) Env {
	e := Env{GoVersion: runtime.Version(), Cores: runtime.NumCPU(), CPUModel: cpuModel()}
	cmd := exec.Command("git", "rev-parse", "--short", "HEAD")
	cmd.Dir = dir
	if out, err := cmd.Output(); err == nil {
		e.Commit = strings.TrimSpace(string(out))
	}
	cmd = exec.Command("git", "status", "--porcelain", "--untracked-files=no")
	cmd.Dir = dir
	if out, err := cmd.Output(); err == nil {
		e.Dirty = len(bytes.TrimSpace(out)) > 0
	}
	e.LoadAvg = loadAvg()
	return e
}

func loadAvg() string {
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			return strings.Join(f[:3], " ")
		}
	}
	return ""
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Percentiles in milliseconds.
type Percentiles struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p99_9_ms"`
	Max   float64 `json:"max_ms"`
}

// PercentilesOf summarises a histogram of microseconds.
func PercentilesOf(h *hdrhistogram.Histogram) Percentiles {
	if h == nil || h.TotalCount() == 0 {
		return Percentiles{}
	}
	ms := func(v int64) float64 { return float64(v) / 1000 }
	return Percentiles{Count: h.TotalCount(), P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)),
		P99: ms(h.ValueAtQuantile(99)), P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max())}
}

// Check is a phase's correctness verdict.
type Check struct {
	Acked           int64    `json:"acked"`
	Delivered       int64    `json:"delivered"` // distinct acked events that arrived
	Poison          int64    `json:"poison"`    // acked events the sink refuses
	Aborted         int64    `json:"aborted"`   // dead letters in Sluice
	Missing         int64    `json:"missing"`
	Duplicates      int      `json:"duplicates"`
	OrderViolations int      `json:"order_violations"`
	Abandoned       int64    `json:"abandoned_requests"`
	Problems        []string `json:"problems,omitempty"`
	OK              bool     `json:"ok"`
}

// LoadParams records how a phase's load was generated.
type LoadParams struct {
	Mode       string  `json:"mode"`
	Batch      int     `json:"batch"`
	Single     bool    `json:"single,omitempty"`
	Gzip       bool    `json:"gzip,omitempty"`
	Senders    int     `json:"senders"`
	Rate       float64 `json:"rate,omitempty"`
	Users      int     `json:"users"`
	HotPercent float64 `json:"hot_percent,omitempty"`
	EventBytes int     `json:"event_bytes"`
}

// SluiceStats are the Sluice process's figures over a phase.
type SluiceStats struct {
	CPUSeconds        float64 `json:"cpu_seconds"`
	CPUMicrosPerEvent float64 `json:"cpu_us_per_event"`
	VmHWMBytes        int64   `json:"vm_hwm_bytes"`
	DiskBytes         int64   `json:"disk_bytes"`
	DiskBytesPerEvent float64 `json:"disk_bytes_per_event"`
	// SegmentBytesWritten is sluice_engine_bytes_written_total: the log
	// bytes written, also those of segments already reclaimed (data dir
	// size only holds what is still needed).
	SegmentBytesWritten  int64   `json:"segment_bytes_written"`
	SegmentBytesPerEvent float64 `json:"segment_bytes_per_event"`
}

// DeliveredPoint is a sample of the sink's distinct-event count.
type DeliveredPoint struct {
	T      float64 `json:"t"` // seconds since the phase start
	Unique int     `json:"unique"`
}

// RouterPoint is a sample of the destination's router figures from
// GET /metrics.
type RouterPoint struct {
	T              float64 `json:"t"` // seconds since the phase start
	Backlog        float64 `json:"backlog"`
	FailedEntries  float64 `json:"failed_entries"`
	SkippedEntries float64 `json:"skipped_entries"`
	Concurrency    float64 `json:"concurrency"`
	InFlight       float64 `json:"in_flight"`
	Window         float64 `json:"window"`
	Healthy        float64 `json:"healthy"`
}

// Phase is one measured run inside a scenario.
type Phase struct {
	Name   string     `json:"name"`
	Repeat int        `json:"repeat"`
	Target string     `json:"target"` // sluice, fasthttp-noop, fasthttp-file
	Load   LoadParams `json:"load"`
	// Events acknowledged, over Seconds (first request to last 200).
	Events       int64   `json:"events"`
	Requests     int64   `json:"requests"`
	Seconds      float64 `json:"seconds"`
	EventsPerSec float64 `json:"events_per_sec"`
	MBPerSec     float64 `json:"mb_per_sec"` // request body bytes
	// Latency of acknowledgements (per request; open loop from the
	// intended send time).
	Latency Percentiles `json:"latency"`
	// Delivery latency at the sink (receivedAt to arrival, per event).
	Delivery *Percentiles `json:"delivery,omitempty"`
	// DeliveredPerSec is end to end: delivered events over the time from
	// the first request to the last delivery.
	DeliveredPerSec float64          `json:"delivered_per_sec,omitempty"`
	Sluice          *SluiceStats     `json:"sluice,omitempty"`
	LoadGenCPUUs    float64          `json:"loadgen_cpu_us_per_event"`
	MaxLatenessMs   float64          `json:"max_lateness_ms,omitempty"`
	NotSent         int64            `json:"not_sent,omitempty"`
	Retries         int64            `json:"retries,omitempty"`
	Statuses        map[string]int64 `json:"statuses,omitempty"`
	Check           *Check           `json:"check,omitempty"`
	// Ratios of EventsPerSec to other phases of the same run (ceilings).
	Ratios map[string]float64 `json:"ratios,omitempty"`
	// Profile is the top of a perf report of the sluice process.
	Profile string `json:"profile,omitempty"`
	// SluiceLog is the end of sluice's output (warnings and errors; the
	// config sets log_level warn).
	SluiceLog       string             `json:"sluice_log,omitempty"`
	Extra           map[string]float64 `json:"extra,omitempty"`
	Series          []Second           `json:"series,omitempty"`
	DeliveredSeries []DeliveredPoint   `json:"delivered_series,omitempty"`
	RouterSeries    []RouterPoint      `json:"router_series,omitempty"`
	Hgrm            string             `json:"hgrm,omitempty"`
	DeliveryHgrm    string             `json:"delivery_hgrm,omitempty"`
	hist            *hdrhistogram.Histogram
	deliveryHist    *hdrhistogram.Histogram
}

// Result is one scenario's output (result.json).
type Result struct {
	Scenario    string               `json:"scenario"`
	Pass        bool                 `json:"pass"`
	Failures    []string             `json:"failures,omitempty"`
	Notes       []string             `json:"notes,omitempty"`
	Env         Env                  `json:"env"`
	Quick       bool                 `json:"quick"`
	Repeats     int                  `json:"repeats"`
	Started     time.Time            `json:"started"`
	WallSeconds float64              `json:"wall_seconds"`
	Summary     map[string]float64   `json:"summary"`      // medians over repeats
	SummaryRuns map[string][]float64 `json:"summary_runs"` // every repeat
	Phases      []Phase              `json:"phases"`
}

// ReadResult reads dir/result.json.
func ReadResult(dir string) (*Result, error) {
	b, err := os.ReadFile(filepath.Join(dir, "result.json"))
	if err != nil {
		return nil, err
	}
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return &r, nil
}

// Median returns the median of vs (0 for none).
func Median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// PhaseMedian returns, for the phases called name, the median of f.
func (r *Result) PhaseMedian(name string, f func(*Phase) float64) (float64, int) {
	var vs []float64
	for i := range r.Phases {
		if r.Phases[i].Name == name {
			vs = append(vs, f(&r.Phases[i]))
		}
	}
	return Median(vs), len(vs)
}

// PhaseNames returns the distinct phase names in order of appearance.
func (r *Result) PhaseNames() []string {
	var names []string
	for _, p := range r.Phases {
		if !slices.Contains(names, p.Name) {
			names = append(names, p.Name)
		}
	}
	return names
}
