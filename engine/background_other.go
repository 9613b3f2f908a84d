//go:build !linux

package engine

// lowerThreadPriority: only Linux sets a thread's priority; elsewhere
// background work runs at the process's priority.
func lowerThreadPriority() {}
