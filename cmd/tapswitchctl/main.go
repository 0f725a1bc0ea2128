// Command tapswitchctl is the operator's CLI of tapswitchd: attach network
// namespaces as pods, forward host ports to them, list pods, forwards, the
// FDB and the counters.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"tapswitch/daemon/api"
)

const usage = `Usage: tapswitchctl COMMAND [flags]

Commands:
  pod add --id ID --netns PATH [--ifname eth0] [--no-offloads]
          [--pod-namespace NS --pod-name NAME]   attach a network namespace as a pod
  pod del --id ID                                detach a pod and remove its TAP
  pod check --id ID                              check the pod's interface is as
                                                 attached (MAC, MTU, addresses,
                                                 routes, on the switch)
  pods                                           list pods
  forward add --listen ADDR:PORT --pod ID --port PORT [--proto tcp|udp]
                                                 listen on a host address and
                                                 forward to a pod's port
  forward del --listen ADDR:PORT [--proto tcp|udp]
                                                 remove a port forward
  forward list                                   list port forwards
  ipam                                           list address leases
  status                                         pods and free addresses per CIDR
  fdb                                            list learned MAC addresses
  stats                                          per-port counters
  node                                           this node's entry for a peers file (-o json: as the file has it)
  peers                                          the overlay's peers and their traffic

Every command takes --socket PATH (default ` + api.DefaultSocket + `)
and -o table|json. Run "tapswitchctl COMMAND -h" for its flags.
`

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "tapswitchctl:", err)
		}
		os.Exit(exitCode(err))
	}
}

func exitCode(err error) int {
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	return 1
}

var errUsage = errors.New("usage")

// command is one subcommand: its flags and what it does with a client.
type command struct {
	name  string
	flags func(fs *flag.FlagSet) runFunc
}

var commands = []command{
	{"pod add", podAddCmd},
	{"pod del", podDelCmd},
	{"pod check", podCheckCmd},
	{"pods", podsCmd},
	{"forward add", forwardAddCmd},
	{"forward del", forwardDelCmd},
	{"forward list", forwardListCmd},
	{"ipam", ipamCmd},
	{"status", statusCmd},
	{"fdb", fdbCmd},
	{"stats", statsCmd},
	{"node", nodeCmd},
	{"peers", peersCmd},
}

func run(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return fmt.Errorf("%w: no command", errUsage)
		}
		return nil
	}
	lead, args := leadingFlags(args)
	cmd, rest, ok := findCommand(args)
	rest = append(lead, rest...)
	if !ok {
		return fmt.Errorf("%w: unknown command %q (see tapswitchctl -h)", errUsage, strings.Join(args[:min(2, len(args))], " "))
	}
	fs := flag.NewFlagSet("tapswitchctl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	socket := fs.String("socket", api.DefaultSocket, "`path` of tapswitchd's unix socket")
	format := fs.String("o", "table", "output `format`: table or json")
	exec := cmd.flags(fs)
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if *format != "table" && *format != "json" {
		return fmt.Errorf("%w: -o %q: want table or json", errUsage, *format)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return exec(ctx, api.NewClient(*socket), output{w: stdout, json: *format == "json"})
}

// leadingFlags splits off the common flags given before the command, as in
// "tapswitchctl --socket PATH pods", so they can be parsed with its own.
func leadingFlags(args []string) (lead, rest []string) {
	for len(args) > 0 {
		switch a := args[0]; {
		case a == "--socket" || a == "-socket" || a == "-o" || a == "--o":
			if len(args) < 2 {
				return append(lead, args...), nil
			}
			lead, args = append(lead, args[:2]...), args[2:]
		case strings.HasPrefix(a, "--socket=") || strings.HasPrefix(a, "-socket=") || strings.HasPrefix(a, "-o="):
			lead, args = append(lead, a), args[1:]
		default:
			return lead, args
		}
	}
	return lead, args
}

// findCommand matches the longest command name at the start of args.
func findCommand(args []string) (command, []string, bool) {
	for _, c := range commands {
		words := strings.Fields(c.name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == c.name {
			return c, args[len(words):], true
		}
	}
	return command{}, nil, false
}

// output prints either JSON or a table.
type output struct {
	w    io.Writer
	json bool
}

func (o output) printJSON(v any) error {
	enc := json.NewEncoder(o.w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
