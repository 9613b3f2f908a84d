// Package fuzz holds Sluice's fuzz targets and, as it grows, the
// deterministic simulation of ingest, engine and router. The targets run
// briefly in CI (as seed-corpus tests) and for long with `make fuzz`.
package fuzz
