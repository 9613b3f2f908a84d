// Command mutate plants known bugs in a copy of the tree, one at a time,
// and reports which of them the tests catch (`make mutate`; not in CI: it
// runs a package's tests once per bug). A bug that survives is a gap in the
// tests; a bug whose text is no longer in its file is reported as stale,
// so the list is kept up to date when the code moves.
//
//	go run ./fuzz/mutate [-run REGEXP] [-keep]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// mutation is one planted bug: old (found exactly once in file) becomes
// new, and the tests of pkgs must then fail.
type mutation struct {
	name, file, old, new string
	pkgs                 []string
}

// mutations are the bugs an outside check planted (issue 23) and others
// like them: each was once caught by one narrow test only, or by none.
var mutations = []mutation{
	{"dedup window cut short by a generation", "engine/dedup.go",
		"if g.gen < min {", "if g.gen <= min {", []string{"./engine"}},
	{"frame checksum not checked", "engine/record.go",
		"if crc32.Checksum(buf[8:n], crcTable) != binary.LittleEndian.Uint32(buf[4:]) {",
		"if false && crc32.Checksum(buf[8:n], crcTable) != binary.LittleEndian.Uint32(buf[4:]) {", []string{"./engine"}},
	{"file destination acknowledges without fsync", "router/filedest/filedest.go",
		"if err = d.f.Sync(); err == nil {", "if err = error(nil); err == nil {", []string{"./router/filedest"}},
	{"breaker: a failure confirmed though the breaker opened since", "router/health.go",
		"if !h.opened.Before(failedAt) && !h.opened.IsZero() {", "if false {", []string{"./router"}},
	{"429 charged to the event like a failure", "router/policy.go",
		"if contains(p.ThrottleStatuses, s) {\n\t\treturn outThrottled", "if contains(p.ThrottleStatuses, s) {\n\t\treturn outRetryable", []string{"./router"}},
	{"rate limit ten times too loose", "router/health.go",
		"b.tokens+now.Sub(b.last).Seconds()*b.rate)", "b.tokens+now.Sub(b.last).Seconds()*b.rate*10)", []string{"./router"}},
	{"ordering key: userId before anonymousId", "ingest/event.go",
		"keySpan := anon\n\tif isEmpty(body, anon) {\n\t\tkeySpan = user", "keySpan := user\n\tif isEmpty(body, user) {\n\t\tkeySpan = anon", []string{"./ingest"}},
	{"partial answer: later events of a failed one resent", "router/core.go",
		"\t\to := outs[i]\n\t\tif o == outSuccess {", "\t\to := outs[i]\n\t\tif o == outSuccess && stopped[it.key] {\n\t\t\tback = append(back, it)\n\t\t\tcontinue\n\t\t}\n\t\tif o == outSuccess {", []string{"./router"}},
}

func main() {
	run := flag.String("run", "", "plant only the bugs whose name matches this regexp")
	keep := flag.Bool("keep", false, "keep the copy of the tree")
	flag.Parse()
	if err := mutate(*run, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "mutate:", err)
		os.Exit(1)
	}
}

func mutate(run string, keep bool) error {
	match, err := regexp.Compile(run)
	if err != nil {
		return fmt.Errorf("-run: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	root, err := gitOut(ctx, "", "rev-parse", "--show-toplevel")
	if err != nil {
		return err
	}
	// A worktree of HEAD: the checkout is never edited.
	tree, err := os.MkdirTemp("", "sluice-mutate-")
	if err != nil {
		return err
	}
	if _, err := gitOut(ctx, root, "worktree", "add", "--detach", tree, "HEAD"); err != nil {
		return err
	}
	if !keep {
		defer gitOut(context.Background(), root, "worktree", "remove", "--force", tree)
	}
	var caught, survived, stale int
	for _, m := range mutations {
		if !match.MatchString(m.name) {
			continue
		}
		res, took, err := plant(ctx, tree, m)
		if err != nil {
			return err
		}
		switch res {
		case "caught":
			caught++
		case "SURVIVED":
			survived++
		default:
			stale++
		}
		fmt.Printf("%-9s %-60s %s (%v)\n", res, m.name, strings.Join(m.pkgs, " "), took.Round(time.Second))
	}
	fmt.Printf("%d caught, %d survived, %d stale\n", caught, survived, stale)
	if survived > 0 || stale > 0 {
		return errors.New("some planted bugs survived the tests or are stale")
	}
	return nil
}

// plant applies m in tree, runs its packages' tests, and restores the file.
func plant(ctx context.Context, tree string, m mutation) (string, time.Duration, error) {
	path := filepath.Join(tree, m.file)
	orig, err := os.ReadFile(path)
	if err != nil {
		return "", 0, err
	}
	if n := bytes.Count(orig, []byte(m.old)); n != 1 {
		return fmt.Sprintf("stale(%d)", n), 0, nil
	}
	if err := os.WriteFile(path, bytes.Replace(orig, []byte(m.old), []byte(m.new), 1), 0o644); err != nil {
		return "", 0, err
	}
	defer os.WriteFile(path, orig, 0o644)
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", append([]string{"test", "-count=1", "-timeout", "10m"}, m.pkgs...)...)
	cmd.Dir = tree
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return "", 0, ctx.Err()
	}
	if err == nil {
		return "SURVIVED", time.Since(start), nil
	}
	if bytes.Contains(out, []byte("[build failed]")) || bytes.Contains(out, []byte("[setup failed]")) {
		return "stale(build)", time.Since(start), nil
	}
	return "caught", time.Since(start), nil
}

func gitOut(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}
