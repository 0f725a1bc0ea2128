// Command tapswitch is the tapswitch CNI plugin. A container runtime
// (containerd, CRI-O, podman, cnitool) runs it for a conflist entry with
// "type": "tapswitch", with CNI_COMMAND ADD, DEL, CHECK, STATUS, GC or
// VERSION; it asks tapswitchd to do the work. See package cni.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"tapswitch/cni"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.SupportedVersions,
		"tapswitch CNI plugin: pods on the tapswitchd userspace switch (CNI 0.3.0 to 1.1.0)")
}
