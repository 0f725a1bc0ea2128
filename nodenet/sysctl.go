package nodenet

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// procSys is where the kernel's sysctls are. Each file under
// /proc/sys/net belongs to the network namespace of the thread that opens
// it, so these functions act on the calling thread's namespace.
const procSys = "/proc/sys"

// EnableForwarding turns on forwarding in the calling thread's network
// namespace: net.ipv4.ip_forward, and net.ipv6.conf.all.forwarding when v6
// is set. It returns the sysctls it changed; ones already on are not
// listed. An error names the sysctl file and says what is missing.
//
// IPv6 forwarding has a side effect the caller should log: an interface
// whose accept_ra is 1 stops taking router advertisements, so a node that
// gets its IPv6 default route by SLAAC needs accept_ra=2 on its uplink.
func EnableForwarding(v6 bool) (changed []string, err error) {
	return enableForwarding(procSys, v6)
}

// enableForwarding is EnableForwarding on the sysctl tree at root.
func enableForwarding(root string, v6 bool) ([]string, error) {
	names := [][]string{{"net", "ipv4", "ip_forward"}}
	if v6 {
		names = append(names, []string{"net", "ipv6", "conf", "all", "forwarding"})
	}
	var changed []string
	for _, name := range names {
		did, err := enableSysctl(root, name...)
		if err != nil {
			return changed, err
		}
		if did {
			changed = append(changed, sysctlName(name))
		}
	}
	return changed, nil
}

// ensureRouteLocalnet sets net.ipv4.conf.<dev>.route_localnet to 1 under
// root, and reports whether it changed it. A missing device is an error
// that names it.
func ensureRouteLocalnet(root, dev string) (changed bool, err error) {
	dir := filepath.Join(root, "net", "ipv4", "conf", dev)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("nodenet: host port device %s does not exist in this network namespace; "+
			"loopback hostPorts need net.ipv4.conf.%s.route_localnet=1 on it (%s missing)", dev, dev, dir)
	}
	return enableSysctl(root, "net", "ipv4", "conf", dev, "route_localnet")
}

// enableSysctl writes 1 to the sysctl named by the path elements under
// root unless it reads 1 already, and reports whether it wrote. Errors
// name the file (fs.PathError does) and add what the daemon lacks.
func enableSysctl(root string, name ...string) (changed bool, err error) {
	path := filepath.Join(append([]string{root}, name...)...)
	cur, err := os.ReadFile(path)
	if err != nil {
		return false, sysctlError(name, err)
	}
	if string(bytes.TrimSpace(cur)) == "1" {
		return false, nil
	}
	// No O_CREATE: a missing sysctl is an error, not a new file.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return false, sysctlError(name, err)
	}
	_, err = f.WriteString("1\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, sysctlError(name, err)
	}
	return true, nil
}

// sysctlError wraps err, from reading or writing the sysctl name, with a
// hint at what the daemon lacks.
func sysctlError(name []string, err error) error {
	var hint string
	switch {
	case errors.Is(err, syscall.EROFS):
		hint = "the daemon needs write access to /proc/sys, e.g. a privileged container"
	case errors.Is(err, fs.ErrPermission):
		hint = "the daemon needs CAP_NET_ADMIN in this network namespace"
	case errors.Is(err, fs.ErrNotExist) && name[1] == "ipv6":
		hint = "the kernel has IPv6 turned off (ipv6.disable=1?)"
	case errors.Is(err, fs.ErrNotExist):
		hint = "the kernel has no such sysctl"
	}
	if hint == "" {
		return fmt.Errorf("nodenet: set %s=1: %w", sysctlName(name), err)
	}
	return fmt.Errorf("nodenet: set %s=1: %w; %s", sysctlName(name), err, hint)
}

// sysctlName returns the dotted name sysctl(8) shows for the path
// elements, with dots inside an element (a device named eth0.100) written
// as slashes, as sysctl(8) does.
func sysctlName(name []string) string {
	parts := make([]string, len(name))
	for i, n := range name {
		parts[i] = strings.ReplaceAll(n, ".", "/")
	}
	return strings.Join(parts, ".")
}
