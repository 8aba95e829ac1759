package bench

import (
	"math"
	"time"
)

// histGrowth is the ratio between a bucket's bounds: latencies are known to
// within 2%.
const histGrowth = 1.02

// hist is a latency histogram with log-spaced buckets from 1µs to about 400s.
// It merges by addition, so workers and processes each keep their own.
type hist struct {
	Counts [1000]uint32 `json:"c"`
}

func (h *hist) add(d time.Duration) {
	us := float64(d) / float64(time.Microsecond)
	i := 0
	if us > 1 {
		i = min(int(math.Log(us)/math.Log(histGrowth))+1, len(h.Counts)-1)
	}
	h.Counts[i]++
}

func (h *hist) merge(o *hist) {
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
}

func (h *hist) count() (n uint64) {
	for _, c := range h.Counts {
		n += uint64(c)
	}
	return n
}

// quantile returns the upper bound of the bucket holding the q-quantile.
func (h *hist) quantile(q float64) time.Duration {
	n := h.count()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	var seen uint64
	for i, c := range h.Counts {
		if seen += uint64(c); seen >= max(rank, 1) {
			return time.Duration(math.Pow(histGrowth, float64(i)) * float64(time.Microsecond))
		}
	}
	return 0
}
