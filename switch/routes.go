package vswitch

import (
	"fmt"
	"net/netip"
	"slices"
)

// The router's route table: prefix → port and next-hop MAC, longest
// prefix first. The overlay puts other nodes' pod CIDRs here; the daemon
// puts the default routes to the host port. The table is part of the
// router's immutable snapshot (router.go) and replaced whole on change.

// Route sends packets for Prefix out of Port to the next hop NextHop.
type Route struct {
	Prefix netip.Prefix
	Port   PortID
	// NextHop is the MAC routed frames are sent to.
	NextHop MAC
	// MTU is the largest IP packet the next hop takes (0: the port's
	// MaxFrame less the Ethernet header).
	MTU int
}

// routeTable finds the longest prefix that matches an address: a map per
// prefix length, longest first, so a lookup costs one map access per
// distinct length in the table (two or three in practice), whatever the
// number of routes.
type routeTable struct {
	v4, v6 []routesOfLen
}

type routesOfLen struct {
	bits int
	m    map[netip.Prefix]Route
}

func (rt *routeTable) lookup(dst netip.Addr) (Route, bool) {
	lens := rt.v4
	if dst.Is6() {
		lens = rt.v6
	}
	for _, l := range lens {
		p, _ := dst.Prefix(l.bits) // bits fits dst's family by construction
		if r, ok := l.m[p]; ok {
			return r, true
		}
	}
	return Route{}, false
}

// buildRoutes makes a table of routes; a later route for a prefix
// replaces an earlier one.
func buildRoutes(routes []Route) routeTable {
	var rt routeTable
	for _, r := range routes {
		lens := &rt.v4
		if r.Prefix.Addr().Is6() {
			lens = &rt.v6
		}
		i := slices.IndexFunc(*lens, func(l routesOfLen) bool { return l.bits == r.Prefix.Bits() })
		if i < 0 {
			*lens = append(*lens, routesOfLen{bits: r.Prefix.Bits(), m: map[netip.Prefix]Route{}})
			i = len(*lens) - 1
		}
		(*lens)[i].m[r.Prefix] = r
	}
	for _, lens := range []*[]routesOfLen{&rt.v4, &rt.v6} {
		slices.SortFunc(*lens, func(a, b routesOfLen) int { return b.bits - a.bits })
	}
	return rt
}

func (rt *routeTable) list() []Route {
	var out []Route
	for _, lens := range [][]routesOfLen{rt.v4, rt.v6} {
		for _, l := range lens {
			for _, r := range l.m {
				out = append(out, r)
			}
		}
	}
	slices.SortFunc(out, func(a, b Route) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return out
}

// SetRoute adds route, or replaces the route for the same prefix.
func (s *Switch) SetRoute(route Route) error {
	if err := s.checkRoute(&route); err != nil {
		return err
	}
	return s.changeRoutes(func(routes []Route) []Route {
		routes = slices.DeleteFunc(routes, func(r Route) bool { return r.Prefix == route.Prefix })
		return append(routes, route)
	})
}

// checkRoute checks route and masks its prefix.
func (s *Switch) checkRoute(route *Route) error {
	if !route.Prefix.IsValid() || route.Prefix.Addr().Is4In6() || route.Prefix.Addr().Zone() != "" {
		return fmt.Errorf("vswitch: route prefix %v is not valid", route.Prefix)
	}
	route.Prefix = route.Prefix.Masked()
	if route.NextHop.Multicast() || route.NextHop.Zero() {
		return fmt.Errorf("vswitch: route %v: next hop %s is not unicast", route.Prefix, route.NextHop)
	}
	ps, ok := s.ports.Load().byID[route.Port]
	if !ok {
		return fmt.Errorf("vswitch: route %v: port %d: %w", route.Prefix, route.Port, ErrNoPort)
	}
	if route.MTU < 0 || route.MTU > ps.caps.MaxFrame-EtherHdrLen {
		return fmt.Errorf("vswitch: route %v: mtu %d: want 0 to %d (port %s)", route.Prefix, route.MTU, ps.caps.MaxFrame-EtherHdrLen, ps.name)
	}
	least := 68 // RFC 791
	if route.Prefix.Addr().Is6() {
		least = 1280 // RFC 8200 section 5
	}
	if route.MTU != 0 && route.MTU < least {
		return fmt.Errorf("vswitch: route %v: mtu %d is below %d", route.Prefix, route.MTU, least)
	}
	return nil
}

// DeleteRoute removes the route for prefix and reports whether there was
// one.
func (s *Switch) DeleteRoute(prefix netip.Prefix) (bool, error) {
	prefix = prefix.Masked()
	found := false
	err := s.changeRoutes(func(routes []Route) []Route {
		n := len(routes)
		routes = slices.DeleteFunc(routes, func(r Route) bool { return r.Prefix == prefix })
		found = len(routes) < n
		return routes
	})
	return found, err
}

// Routes lists the routes, by prefix.
func (s *Switch) Routes() []Route {
	r := s.rt.cur.Load()
	if r == nil {
		return nil
	}
	return r.routes.list()
}

func (s *Switch) changeRoutes(fn func([]Route) []Route) error {
	s.rt.mu.Lock()
	defer s.rt.mu.Unlock()
	old := s.rt.cur.Load()
	if old == nil {
		return ErrNoRouter
	}
	next := *old
	next.routes = buildRoutes(fn(old.routes.list()))
	s.rt.cur.Store(&next)
	return nil
}
