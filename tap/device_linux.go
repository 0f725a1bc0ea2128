package tap

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"tapswitch/internal/netnsutil"
)

// Create makes a new persistent TAP device cfg.Name inside cfg.NetNS, sets
// its MAC and MTU, adds its addresses, sets it up, adds the default route,
// and returns a Port over cfg.Queues fds. It fails with an error wrapping
// ErrExists if a device of that name is there already. On failure it
// removes everything it made.
func Create(cfg Config) (_ *Port, err error) {
	cfg, err = cfg.withDefaults(false)
	if err != nil {
		return nil, err
	}
	h, err := newHandle(cfg.NetNS)
	if err != nil {
		return nil, fmt.Errorf("tap: create %s: %w", cfg.Name, err)
	}
	defer h.Close()
	if _, err := h.LinkByName(cfg.Name); err == nil {
		return nil, cfg.errorf("create", ErrExists)
	} else if !isNotFound(err) {
		return nil, cfg.errorf("look up", err)
	}

	var fds []int
	err = netnsutil.Do(cfg.NetNS, func() (err error) {
		fds, err = openQueues(cfg.Name, cfg.Queues, true, cfg.Offloads)
		return err
	})
	if errors.Is(err, unix.EBUSY) { // lost a race with another creator
		err = ErrExists
	}
	if err != nil {
		return nil, cfg.errorf("create", err)
	}
	// The device is persistent now: closing the fds no longer removes it.
	defer func() {
		if err != nil {
			deleteLink(h, cfg.Name)
		}
	}()
	p, err := newPortFromFDs(fds, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	link, err := h.LinkByName(cfg.Name)
	if err != nil {
		return nil, cfg.errorf("look up", err)
	}
	if err := configureLink(h, link, cfg); err != nil {
		return nil, err
	}
	p.log.Info("tap created", "netns", cfg.NetNS, "ifname", cfg.Name, "queues", cfg.Queues, "offloads", cfg.Offloads)
	return p, nil
}

// Open attaches cfg.Queues fds to the existing TAP device cfg.Name inside
// cfg.NetNS, as after a daemon restart, and returns a Port over them. It
// checks the device is a multiqueue TAP with cfg.MAC and, if cfg.MTU is set,
// that MTU; a zero cfg.MTU takes the device's. It changes no addresses or
// routes. It fails with an error wrapping ErrNotFound if there is no such
// device.
func Open(cfg Config) (_ *Port, err error) {
	cfg, err = cfg.withDefaults(true)
	if err != nil {
		return nil, err
	}
	h, err := newHandle(cfg.NetNS)
	if err != nil {
		return nil, fmt.Errorf("tap: open %s: %w", cfg.Name, err)
	}
	defer h.Close()
	link, err := checkLink(h, &cfg)
	if err != nil {
		return nil, err
	}
	var fds []int
	err = netnsutil.Do(cfg.NetNS, func() (err error) {
		fds, err = openQueues(cfg.Name, cfg.Queues, false, cfg.Offloads)
		return err
	})
	if err != nil {
		return nil, cfg.errorf("open", err)
	}
	// If the device vanished after checkLink, TUNSETIFF made a new one,
	// which is not persistent: closing the fds removes it again.
	now, err := h.LinkByName(cfg.Name)
	if err != nil && !isNotFound(err) {
		closeFDs(fds)
		return nil, cfg.errorf("look up", err)
	}
	if err != nil || now.Attrs().Index != link.Attrs().Index {
		closeFDs(fds)
		return nil, cfg.errorf("open", ErrNotFound)
	}
	p, err := newPortFromFDs(fds, cfg)
	if err != nil {
		return nil, err
	}
	p.log.Info("tap opened", "netns", cfg.NetNS, "ifname", cfg.Name, "queues", cfg.Queues, "offloads", cfg.Offloads)
	return p, nil
}

// checkLink looks up the device for Open and checks it is a multiqueue TAP
// with cfg's MAC and MTU. It fills in cfg.MTU when it is 0.
func checkLink(h *netlink.Handle, cfg *Config) (netlink.Link, error) {
	link, err := h.LinkByName(cfg.Name)
	if isNotFound(err) {
		return nil, cfg.errorf("open", ErrNotFound)
	} else if err != nil {
		return nil, cfg.errorf("look up", err)
	}
	if !isMultiqueueTAP(link) {
		return nil, cfg.errorf("open", fmt.Errorf("not a multiqueue tap device (%s)", link.Type()))
	}
	attrs := link.Attrs()
	if got := string(attrs.HardwareAddr); got != string(cfg.MAC[:]) {
		return nil, cfg.errorf("open", fmt.Errorf("mac is %s, want %s", attrs.HardwareAddr, cfg.MAC))
	}
	if cfg.MTU == 0 {
		cfg.MTU = attrs.MTU
	} else if attrs.MTU != cfg.MTU {
		return nil, cfg.errorf("open", fmt.Errorf("mtu is %d, want %d", attrs.MTU, cfg.MTU))
	}
	if cfg.MTU > maxMTU(cfg.Offloads) {
		return nil, cfg.errorf("open", fmt.Errorf("mtu %d, want at most %d", cfg.MTU, maxMTU(cfg.Offloads)))
	}
	return link, nil
}

// Delete removes the TAP device name from the netns at netnsPath. It
// returns nil if the netns (see netnsutil.Gone) or the device is already
// gone, and an error if name is a device of another kind.
func Delete(netnsPath, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	h, err := newHandle(netnsPath)
	if netnsutil.Gone(err) {
		return nil
	} else if err != nil {
		return fmt.Errorf("tap: delete %s: %w", name, err)
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if isNotFound(err) {
		return nil
	} else if err != nil {
		return fmt.Errorf("tap: look up %s in %s: %w", name, netnsPath, err)
	}
	if _, ok := link.(*netlink.Tuntap); !ok {
		return fmt.Errorf("tap: delete %s in %s: not a tap device (%s)", name, netnsPath, link.Type())
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("tap: delete %s in %s: %w", name, netnsPath, err)
	}
	return nil
}

// Exists reports whether a device named name, of any kind, is in the netns
// at netnsPath. A netns path that does not exist holds no device: false,
// nil.
func Exists(netnsPath, name string) (bool, error) {
	if err := ValidName(name); err != nil {
		return false, err
	}
	h, err := newHandle(netnsPath)
	if netnsutil.Gone(err) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("tap: look up %s: %w", name, err)
	}
	defer h.Close()
	_, err = h.LinkByName(name)
	if isNotFound(err) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("tap: look up %s in %s: %w", name, netnsPath, err)
	}
	return true, nil
}

// newHandle returns a netlink handle whose sockets live in the netns at
// path. Errors read "netns PATH: ..." and a missing netns matches
// fs.ErrNotExist.
func newHandle(path string) (*netlink.Handle, error) {
	ns, err := netnsutil.Open(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, &fs.PathError{Op: "netns", Path: path, Err: fmt.Errorf("netlink: %w", err)}
	}
	return h, nil
}

// deleteLink removes the device name, as Create's cleanup.
func deleteLink(h *netlink.Handle, name string) {
	if link, err := h.LinkByName(name); err == nil {
		h.LinkDel(link)
	}
}

// isMultiqueueTAP reports whether link is the kind of device this package
// makes.
func isMultiqueueTAP(link netlink.Link) bool {
	tt, ok := link.(*netlink.Tuntap)
	return ok && tt.Mode == netlink.TUNTAP_MODE_TAP && tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0
}

// isNotFound reports whether a netlink lookup failed for want of the link.
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// errorf wraps err with a step and the device: "tap: STEP eth0 in NETNS: err".
func (cfg *Config) errorf(step string, err error) error {
	return fmt.Errorf("tap: %s %s in %s: %w", step, cfg.Name, cfg.NetNS, err)
}
