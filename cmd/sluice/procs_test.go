package main

import "testing"

func TestProcsFor(t *testing.T) {
	for _, tc := range []struct {
		env               string
		procs, cpus, want int
	}{
		{"", 2, 2, 4},
		{"", 3, 3, 6},
		{"", 1, 1, 0},  // one CPU: nothing to interleave with
		{"", 8, 8, 0},  // enough Ps already
		{"", 1, 2, 0},  // a CPU quota chose fewer Ps
		{"2", 2, 2, 0}, // the operator chose
	} {
		if got := procsFor(tc.env, tc.procs, tc.cpus); got != tc.want {
			t.Errorf("procsFor(%q, %d, %d) = %d, want %d", tc.env, tc.procs, tc.cpus, got, tc.want)
		}
	}
}
