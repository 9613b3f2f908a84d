package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a child process the harness started. Children get SIGKILL if the
// harness dies (Pdeathsig), and Runner stops every one still running when
// a scenario ends, failed or not.
type Proc struct {
	Name   string
	Cmd    *exec.Cmd
	Log    string // path of its combined output
	exited chan struct{}
	state  *os.ProcessState
	logF   *os.File
}

// StartProc starts bin with args, output to logPath.
func StartProc(name, bin string, args []string, dir, logPath string) (*Proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("cannot start %s: %w", bin, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logPath, exited: make(chan struct{}), logF: lf}
	go func() {
		cmd.Wait()
		p.state = cmd.ProcessState
		lf.Close()
		close(p.exited)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits up to timeout, then SIGKILL. It returns
// how long the process took to exit and an error unless it exited 0 after
// SIGTERM.
func (p *Proc) Stop(timeout time.Duration) (time.Duration, error) {
	if p.Exited() {
		return 0, fmt.Errorf("%s had already exited: %v", p.Name, p.state)
	}
	start := time.Now()
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.Cmd.Process.Kill()
		<-p.exited
		return time.Since(start), fmt.Errorf("%s did not exit within %v of SIGTERM; killed", p.Name, timeout)
	}
	d := time.Since(start)
	if !p.state.Success() {
		return d, fmt.Errorf("%s exited with %v after SIGTERM", p.Name, p.state)
	}
	return d, nil
}

// Kill sends SIGKILL and waits.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	p.Cmd.Process.Kill()
	<-p.exited
}

// Tail returns the last n lines of the process's output.
func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// ProcStats are a process's resource figures read from /proc.
type ProcStats struct {
	// CPU is user+system time since the process started.
	CPU time.Duration
	// VmHWM is the peak resident set size in bytes.
	VmHWM int64
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// ReadProcStats reads /proc/PID/stat and /proc/PID/status.
func ReadProcStats(pid int) (ProcStats, error) {
	var st ProcStats
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	// Fields after the command (which may hold spaces) start after ") ".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return st, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return st, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	// f[0] is field 3 (state): utime is field 14, stime 15.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	st.CPU = time.Duration(ut+stt) * time.Second / clockTicks
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	sc := bufio.NewScanner(bytes.NewReader(s))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			st.VmHWM = kb << 10
		}
	}
	return st, nil
}

// DirBytes returns the disk space used by the files under dir (allocated
// blocks, as du counts them).
func DirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			} else {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// FreePort returns a port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Sluice is a running `sluice serve`.
type Sluice struct {
	*Proc
	Addr, Admin string // 127.0.0.1:PORT
	DataDir     string
	Config      string
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// StartSluice writes a config into dir (data in dir/data) with the given
// destinations YAML (list items indented two spaces, or "") and starts bin
// serve, waiting until GET /health answers 200.
func StartSluice(ctx context.Context, bin, dir, writeKey, dests, extra string) (*Sluice, error) {
	var lastErr error
	for range 3 { // a free port may be taken meanwhile
		s, err := startSluiceOnce(ctx, bin, dir, writeKey, dests, extra)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

func startSluiceOnce(ctx context.Context, bin, dir, writeKey, dests, extra string) (*Sluice, error) {
	p1, err := FreePort()
	if err != nil {
		return nil, err
	}
	p2, err := FreePort()
	if err != nil {
		return nil, err
	}
	addr, admin := fmt.Sprintf("127.0.0.1:%d", p1), fmt.Sprintf("127.0.0.1:%d", p2)
	return RestartSluice(ctx, bin, &Sluice{Addr: addr, Admin: admin, DataDir: filepath.Join(dir, "data")}, dir, writeKey, dests, extra)
}

// RestartSluice starts bin again with the addresses and data dir of prev
// (which must have exited).
func RestartSluice(ctx context.Context, bin string, prev *Sluice, dir, writeKey, dests, extra string) (*Sluice, error) {
	s := &Sluice{Addr: prev.Addr, Admin: prev.Admin, DataDir: prev.DataDir, Config: filepath.Join(dir, "sluice.yaml")}
	if dests == "" {
		dests = " []"
	} else {
		dests = "\n" + dests
	}
	cfg := fmt.Sprintf(`# written by sluice-bench
listen: %q
admin_listen: %q
data_dir: %q
log_level: warn
sources:
  - name: bench
    write_key: %q
destinations:%s
%s`, s.Addr, s.Admin, s.DataDir, writeKey, dests, extra)
	if err := os.WriteFile(s.Config, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p, err := StartProc("sluice", bin, []string{"serve", "--config", s.Config}, dir, filepath.Join(dir, "sluice.log"))
	if err != nil {
		return nil, err
	}
	s.Proc = p
	if err := WaitHealthy(ctx, s.Proc, "http://"+s.Addr+"/health", 60*time.Second); err != nil {
		p.Kill()
		return nil, fmt.Errorf("%w\n--- sluice output ---\n%s", err, p.Tail(30))
	}
	return s, nil
}

// WaitHealthy polls url until it answers 200, p exits or timeout passes.
func WaitHealthy(ctx context.Context, p *Proc, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited early: %v", p.Name, p.state)
		}
		if resp, err := c.Get(url); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not answer 200 within %v", url, timeout)
}

// Metrics returns every series of GET /metrics, keyed by name and labels
// as written (e.g. `sluice_router_concurrency{destination="hook"}`).
func (s *Sluice) Metrics() (map[string]float64, error) {
	resp, err := httpClient.Get("http://" + s.Addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[sp+1:], 64); err == nil {
			out[line[:sp]] = v
		}
	}
	return out, sc.Err()
}

// Metric returns the sum of the series of name (with any labels) from GET
// /metrics; labels, if set, must appear in the series' label set.
func (s *Sluice) Metric(name, labels string) (float64, error) {
	resp, err := httpClient.Get("http://" + s.Addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	found := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if labels != "" && !strings.Contains(rest, labels) {
			continue
		}
		sp := strings.LastIndexByte(rest, ' ')
		v, err := strconv.ParseFloat(rest[sp+1:], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("metric %s%s not found", name, labels)
	}
	return sum, sc.Err()
}

// AdminPost posts to the admin API (path like /v1/destinations/hook/pause).
func (s *Sluice) AdminPost(path string) error {
	resp, err := httpClient.Post("http://"+s.Admin+path, "application/json", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
	}
	return nil
}

// DeadLetter is one entry of the admin API's dead-letter list.
type DeadLetter struct {
	Seq        uint64 `json:"seq"`
	MessageID  string `json:"message_id"`
	Reason     string `json:"reason"`
	LastStatus int    `json:"last_status"`
}

// DeadLetters lists every dead letter of dest (pages of 1000, at most
// 1000 pages).
func (s *Sluice) DeadLetters(dest string) ([]DeadLetter, error) {
	var out []DeadLetter
	var after uint64
	for range 1000 {
		resp, err := httpClient.Get(fmt.Sprintf("http://%s/v1/destinations/%s/dlq?limit=1000&after=%d", s.Admin, dest, after))
		if err != nil {
			return out, err
		}
		var page []DeadLetter
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil {
			return out, err
		}
		if len(page) == 0 {
			return out, nil
		}
		for _, d := range page {
			out = append(out, d)
			after = max(after, d.Seq)
		}
	}
	return out, errors.New("too many dead letters")
}

// procSet tracks the children of a scenario so they are stopped however
// it ends.
type procSet struct {
	mu    sync.Mutex
	procs []*Proc
}

func (ps *procSet) add(p *Proc) {
	ps.mu.Lock()
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
}

// stopAll stops every child still running: SIGTERM, then SIGKILL after 20s.
func (ps *procSet) stopAll() {
	ps.mu.Lock()
	procs := ps.procs
	ps.procs = nil
	ps.mu.Unlock()
	for _, p := range procs {
		if !p.Exited() {
			p.Stop(20 * time.Second)
		}
	}
}
