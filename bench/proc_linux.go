package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of CPU times in /proc: USER_HZ, 100 on every Linux
// architecture Go supports (sysconf(_SC_CLK_TCK) needs cgo).
const clockTick = 10 * time.Millisecond

// machineBusy returns the CPU time all CPUs spent busy since boot: the
// first line of /proc/stat less idle and iowait (proc(5)).
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	fields := strings.Fields(string(line))
	// cpu user nice system idle iowait irq softirq steal guest guest_nice;
	// guest time is already counted in user.
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for i, f := range fields[1:9] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return time.Duration(busy) * clockTick, nil
}

// processCPU returns the user plus system CPU time of every thread of
// process pid: utime and stime of /proc/PID/stat (proc(5)).
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it start
	// with state, field 3.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	const utime, stime = 14 - 3, 15 - 3
	if len(fields) <= stime {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields)+2)
	}
	u, err1 := strconv.ParseInt(fields[utime], 10, 64)
	s, err2 := strconv.ParseInt(fields[stime], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime %q or stime %q", pid, fields[utime], fields[stime])
	}
	return time.Duration(u+s) * clockTick, nil
}

// processRSS returns the resident memory of process pid in bytes, VmRSS of
// /proc/PID/status.
func processRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmRSS %q: %w", pid, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// cpuMeter measures the CPU time spent between start and stop: the whole
// machine's, and the switch process's when there is one (pid > 0).
type cpuMeter struct {
	pid           int
	machine0, sw0 time.Duration
}

func startCPU(pid int) (*cpuMeter, error) {
	m := &cpuMeter{pid: pid}
	var err error
	if m.machine0, err = machineBusy(); err != nil {
		return nil, err
	}
	if pid > 0 {
		if m.sw0, err = processCPU(pid); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// stop returns the CPU time used since startCPU by the machine and by the
// switch process (zero without one).
func (m *cpuMeter) stop() (machine, sw time.Duration, err error) {
	busy, err := machineBusy()
	if err != nil {
		return 0, 0, err
	}
	if m.pid > 0 {
		t, err := processCPU(m.pid)
		if err != nil {
			return 0, 0, err
		}
		sw = t - m.sw0
	}
	return busy - m.machine0, sw, nil
}
