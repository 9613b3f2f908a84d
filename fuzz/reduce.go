package fuzz

// Reduce shrinks the knobs of a failing run while fails still holds: fewer
// steps (the script of a shorter run is a prefix of the longer one's),
// fewer users and destinations, fewer fault families. It returns the
// smallest failing knobs it found and how many runs it took, at most
// budget. fails is typically "the first violation has the same kind".
func Reduce(k Knobs, fails func(*Report) bool, budget int) (Knobs, int) {
	k = k.resolve()
	k.Trace = false
	runs := 0
	try := func(c Knobs) bool {
		if runs >= budget {
			return false
		}
		runs++
		if fails(Run(c)) {
			k = c
			return true
		}
		return false
	}
	for progress := true; progress && runs < budget; {
		progress = false
		// Steps: the shortest failing prefix, by bisection (failure is
		// not monotone in the steps, but nearly).
		for lo, hi := 1, k.Steps; lo < hi && runs < budget; {
			mid := (lo + hi) / 2
			if try(with(k, func(c *Knobs) { c.Steps = mid })) {
				hi, progress = mid, true
			} else {
				lo = mid + 1
			}
		}
		for _, n := range []int{1, 2, 3, k.Users / 2} {
			if n >= 1 && n < k.Users && try(with(k, func(c *Knobs) { c.Users = n })) {
				progress = true
				break
			}
		}
		for n := 1; n < k.Dests; n++ {
			if try(with(k, func(c *Knobs) { c.Dests = n })) {
				progress = true
				break
			}
		}
		for bit := Mode(1); bit&modeAll != 0; bit <<= 1 {
			if k.Mode&bit != 0 && try(with(k, func(c *Knobs) { c.Mode &^= bit })) {
				progress = true
			}
		}
	}
	return k, runs
}

func with(k Knobs, f func(*Knobs)) Knobs {
	f(&k)
	return k
}

// SameKind is the usual predicate for Reduce: the reduced run fails first
// with the same kind of violation.
func SameKind(kind string) func(*Report) bool {
	return func(r *Report) bool { return len(r.Violations) > 0 && r.Violations[0].Kind == kind }
}
