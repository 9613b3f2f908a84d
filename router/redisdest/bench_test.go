package redisdest

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-cdi/sluice/engine"
	"github.com/sluice-cdi/sluice/router/internal/drainbench"
)

// BenchmarkRedisDrain: XADD into one stream; the ceiling is the same
// go-redis client sending the same XADDs as a plain pipeline (no
// MULTI/EXEC, no script), so the ratio also pays for the transaction and,
// idempotent, for the script.
func BenchmarkRedisDrain(b *testing.B) {
	for _, idem := range []bool{false, true} {
		b.Run(fmt.Sprintf("idempotent=%v", idem), func(b *testing.B) {
			c := admin(b, testAddr())
			p := prefix(b, c)
			d := newDest(b, Config{Addr: testAddr(), Stream: p + "{type}", Idempotent: idem, DedupPrefix: "sluice:seen:" + p,
				Conns: drainbench.InFlight * 2})
			ctx := context.Background()
			drainbench.Compare(b, d, func(batch []engine.Record) error {
				pipe := d.client.Pipeline()
				for _, r := range batch {
					pipe.XAdd(ctx, &redis.XAddArgs{Stream: p + "ceiling", Values: []any{"event", r.Payload,
						"message_id", r.MessageID, "type", r.Type, "source", r.Source}})
				}
				_, err := pipe.Exec(ctx)
				return err
			})
			if got := c.XLen(ctx, p+"track").Val(); got != int64(b.N*drainbench.Rounds) {
				b.Fatalf("%d entries for %d events", got, b.N*drainbench.Rounds)
			}
		})
	}
}
