package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
)

// fdbBenchmark is the switch package's FDB benchmark: lookups (hit, miss)
// and refreshes in an FDB of 100,000 learned MACs.
const fdbBenchmark = "BenchmarkFDBLookup"

// benchLine matches "BenchmarkFDBLookup/hit-2   123456   25.1 ns/op ...".
var benchLine = regexp.MustCompile(`^` + fdbBenchmark + `/(\S+?)(?:-\d+)?\s+\d+\s+([0-9.]+) ns/op`)

// runFDBBenchmark runs the FDB benchmark of package tapswitch/switch with
// the go command and returns ns/op of each sub-benchmark.
func runFDBBenchmark(ctx context.Context, goCmd, benchtime string) (map[string]float64, error) {
	args := []string{"test", "-run", "^$", "-bench", "^" + fdbBenchmark + "$", "-benchtime", benchtime, "-count", "1", "tapswitch/switch"}
	cmd := exec.CommandContext(ctx, goCmd, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %v: %w\n%s%s", goCmd, args, err, out, stderr.Bytes())
	}
	res := make(map[string]float64)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := benchLine.FindStringSubmatch(sc.Text()); m != nil {
			ns, err := strconv.ParseFloat(m[2], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: %q: %w", fdbBenchmark, sc.Text(), err)
			}
			res[m[1]] = ns
		}
	}
	if _, ok := res["hit"]; !ok {
		return nil, fmt.Errorf("%s: no hit sub-benchmark in the output of go %v:\n%s", fdbBenchmark, args, out)
	}
	return res, nil
}
