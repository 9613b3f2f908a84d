package engine

import (
	"runtime"
	"syscall"
)

// backgroundNice is the nice value of the threads that write and merge
// dedup runs: under contention the scheduler gives them about a tenth of
// a core's share against the threads answering requests, so their bursts
// (sorting a batch, a merge) do not stretch the tail of acknowledgements,
// and they still keep up when the cores are busy.
const backgroundNice = 10

// lowerThreadPriority locks the calling goroutine to its thread and lowers
// that thread's priority. Call it at the start of a goroutine that then
// exits: the thread, still locked, exits with it, so the priority never
// passes to other goroutines. Best effort: an error leaves the priority.
func lowerThreadPriority() {
	runtime.LockOSThread()
	syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), backgroundNice)
}
