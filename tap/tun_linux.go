package tap

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// tunPath is the clone device every TAP queue is opened on.
const tunPath = "/dev/net/tun"

// Offload bits for TUNSETOFFLOAD, from include/uapi/linux/if_tun.h.
const (
	tunFCsum = 0x01 // TUN_F_CSUM: we take frames with partial checksums
	tunFTSO4 = 0x02 // TUN_F_TSO4
	tunFTSO6 = 0x04 // TUN_F_TSO6
	tunFUSO4 = 0x20 // TUN_F_USO4, Linux 6.2
	tunFUSO6 = 0x40 // TUN_F_USO6, Linux 6.2
)

// tunFlags are the TUNSETIFF flags of every queue: an Ethernet device, no
// packet-info prefix, a virtio-net header, multiqueue.
const tunFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_MULTI_QUEUE

// openQueues opens n queues of the TAP device name. It must run on a thread
// inside the device's netns: the kernel looks the name up, or creates the
// device, in the netns the fd was opened in. With create, the first
// TUNSETIFF fails with EBUSY if the name exists (IFF_TUN_EXCL), and the new
// device is made persistent last, so that on failure closing the fds
// removes it. Without create, a missing device would be created: callers
// check it exists first. On failure openQueues closes every fd it opened.
func openQueues(name string, n int, create, offloads bool) (fds []int, err error) {
	defer func() {
		if err != nil {
			closeFDs(fds)
			fds = nil
		}
	}()
	for i := range n {
		flags := tunFlags
		if create && i == 0 {
			flags |= unix.IFF_TUN_EXCL
		}
		fd, err := openQueue(name, uint16(flags))
		if err != nil {
			return fds, fmt.Errorf("queue %d: %w", i, err)
		}
		fds = append(fds, fd)
	}
	// Offloads and persistence belong to the device, so one fd will do.
	if err := setOffloads(fds[0], offloads); err != nil {
		return fds, err
	}
	if create {
		if err := unix.IoctlSetInt(fds[0], unix.TUNSETPERSIST, 1); err != nil {
			return fds, fmt.Errorf("set persistent: %w", err)
		}
	}
	return fds, nil
}

// openQueue opens /dev/net/tun and attaches it to the device name.
func openQueue(name string, flags uint16) (int, error) {
	fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", tunPath, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err == nil {
		ifr.SetUint16(flags)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("attach: %w", err)
	}
	// The header length and byte order belong to the device, but setting
	// them on every queue keeps each fd correct on its own.
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnetHdrLen); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set vnet header size: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETLE, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set vnet header little-endian: %w", err)
	}
	return fd, nil
}

// setOffloads sets which offloads the kernel may use on frames it hands to
// us. Without offloads it is 0: the kernel segments and checksums first.
// USO needs Linux 6.2; older kernels reject it with EINVAL, so ask without.
func setOffloads(fd int, on bool) error {
	if !on {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
			return fmt.Errorf("set offloads off: %w", err)
		}
		return nil
	}
	base := tunFCsum | tunFTSO4 | tunFTSO6
	err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, base|tunFUSO4|tunFUSO6)
	if errors.Is(err, unix.EINVAL) {
		err = unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, base)
	}
	if err != nil {
		return fmt.Errorf("set offloads: %w", err)
	}
	return nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
